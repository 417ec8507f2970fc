"""Tier 1: int8 ONNX -> dependency-free C99 with a static arena memory plan."""

from edgewise.codegen.compile import figures

__all__ = ["figures"]
