"""The integer graph the compiler works on: int8 tensors with their scale and zero point, and ops whose
constants (weights, biases, multipliers) are already in the form the C kernels take."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class QTensor:
    name: str
    shape: tuple[int, ...]  # without the batch dimension
    scale: float
    zero_point: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass
class IntOp:
    kind: str  # conv | fc | maxpool | avgpool | add | mul | concat | clamp | lut | softmax | reshape
    node: str  # the ONNX node it came from, for error messages
    inputs: list[str]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)  # ints (lists of ints for concat)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    macs: int = 0


@dataclass
class IntGraph:
    input: str
    output: str
    tensors: dict[str, QTensor]
    ops: list[IntOp]
    input_name: str = "input"  # the float graph input the int8 input quantizes
    output_name: str = "output"

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.ops)

    def flash_bytes(self) -> int:
        """Constant data as the C arrays store it (weights int8, biases/multipliers/shifts int32)."""
        return sum(int(a.nbytes) for op in self.ops for a in op.consts.values())
