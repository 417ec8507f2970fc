"""Candidates: a model plus the recipe that made it, and the recipes worth trying for a target."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx

from edgewise.optimize.quantize import COMPUTE_OPS, ORT_DEFAULTS, StaticConfig
from edgewise.targets import TargetProfile


@dataclass
class Candidate:
    id: str
    description: str
    parent: str  # the fp32 model it derives from: baseline, pruned, distilled
    precision: str  # fp32 | int8 | mixed | int4
    recipe: list[dict[str, Any]]
    model: onnx.ModelProto | None = None
    macs: int = 0
    params: int = 0
    status: str = "ok"  # ok | rejected
    reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    pareto: bool = False
    # The fp32 graph this candidate computes: activation memory is planned on it (a QDQ graph's
    # extra Quantize/Dequantize tensors do not exist on an int8 device).
    logical: onnx.ModelProto | None = None

    @property
    def feasible(self) -> bool:
        return self.status == "ok" and not self.violations

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "description": self.description, "parent": self.parent,
                "precision": self.precision, "recipe": self.recipe, "status": self.status,
                "reason": self.reason, "metrics": self.metrics, "violations": self.violations,
                "pareto": self.pareto, "macs": self.macs, "params": self.params}


def static_configs(target: TargetProfile, primary: bool) -> list[StaticConfig]:
    """Static int8 settings to try. `primary` is the starting model; derived models get a short list.

    ONNX Runtime targets: u8 activations, s8 per-channel weights, only Conv/MatMul/Gemm quantized
    (the fast path on CPUs), full-range and 7-bit weights, each calibration method; plus ORT's defaults
    as a reference. int8-only targets (MCUs): every op int8 with s8 activations, as the C kernels run them.
    """
    methods = ("minmax", "percentile", "entropy") if primary else ("minmax", "percentile")
    if target.int8_only:
        # CMSIS-NN / TFLite Micro kernels take per-channel and per-tensor weights; per-tensor is smaller.
        return [StaticConfig(method=m, activations="int8", ops=None, weights_per_channel=pc)
                for m in methods for pc in (True, False)]
    cfgs = [StaticConfig(method=m, reduce_range=rr) for m in methods for rr in (False, True)]
    if primary:
        cfgs.append(ORT_DEFAULTS)
    return cfgs


def allowed(precision: str, target: TargetProfile) -> bool:
    if precision == "mixed":
        return "int8" in target.precisions and "fp32" in target.precisions
    return precision in target.precisions


def has_weight_matmul(model: onnx.ModelProto) -> bool:
    inits = {i.name for i in model.graph.initializer}
    return any(n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits
               for n in model.graph.node)


def recipe_static(cfg: StaticConfig, calibration_samples: int) -> dict[str, Any]:
    return {"pass": "quantize", "mode": "static", "format": "QDQ", "calibration": cfg.method,
            "calibration_samples": calibration_samples, "activations": cfg.activations,
            "weights": "int8", "weights_per_channel": cfg.weights_per_channel,
            "reduce_range": cfg.reduce_range, "ops": list(cfg.ops) if cfg.ops else "all",
            "keep_float": list(cfg.exclude)}


__all__ = ["COMPUTE_OPS", "Candidate", "allowed", "has_weight_matmul", "recipe_static", "static_configs"]
