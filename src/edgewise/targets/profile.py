"""Parse and look up target profiles (built-in TOML under profiles/, or a user's .toml path)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from edgewise.errors import TargetError

PRECISIONS = ("fp32", "fp16", "int8", "int4")
OBJECTIVES = ("latency", "size", "accuracy")
TIERS = ("endpoint", "node", "server")
RUNTIMES = ("onnxruntime", "openvino")
# execution providers that run on an accelerator, where fp16 is native and int8 depends on the provider
CPU = "CPUExecutionProvider"
ACCELERATOR_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider",
                         "MIGraphXExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider")


@dataclass(frozen=True)
class TargetProfile:
    name: str
    description: str
    tier: str
    ram_bytes: int
    flash_bytes: int
    latency_budget_ms: float
    precisions: tuple[str, ...]
    objective: str = "latency"
    threads: int = 1  # 0 = all cores
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    # runtimes the search may choose between: onnxruntime (with the providers above), openvino
    runtimes: tuple[str, ...] = ("onnxruntime",)
    openvino_device: str = "CPU"  # CPU, GPU or NPU, as OpenVINO names them
    energy_pj_per_mac: float = 1.0
    macs_per_second: float | None = None  # set for devices we cannot run here (MCUs): latency is estimated
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def int8_only(self) -> bool:
        return set(self.precisions) == {"int8"}

    @property
    def accelerated(self) -> bool:
        """Its first choice of execution provider is a GPU or NPU one."""
        return bool(self.execution_providers) and self.execution_providers[0] in ACCELERATOR_PROVIDERS

    @property
    def cpu_beside_accelerator(self) -> bool:
        """It runs ONNX Runtime on another provider first (a GPU) and lists the CPU as a later choice."""
        eps = self.execution_providers
        return self.runs_onnxruntime and bool(eps) and eps[0] != CPU and CPU in eps[1:]

    @property
    def runs_onnxruntime(self) -> bool:
        return self.macs_per_second is None


def _parse(data: dict[str, object], origin: str) -> TargetProfile:
    required = ("name", "ram_bytes", "flash_bytes", "latency_budget_ms", "precisions")
    missing = [k for k in required if k not in data]
    if missing:
        raise TargetError(f"{origin}: target profile lacks {', '.join(missing)}")
    known = set(TargetProfile.__dataclass_fields__) - {"extra"}
    kwargs = {k: v for k, v in data.items() if k in known}
    kwargs["extra"] = {k: v for k, v in data.items() if k not in known}
    kwargs.setdefault("description", "")
    kwargs.setdefault("tier", "node")
    for key in ("precisions", "execution_providers", "runtimes"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])  # type: ignore[arg-type]
    try:
        t = TargetProfile(**kwargs)  # type: ignore[arg-type]
    except TypeError as e:
        raise TargetError(f"{origin}: malformed target profile ({e})") from e
    bad = [p for p in t.precisions if p not in PRECISIONS]
    if bad or not t.precisions:
        raise TargetError(f"{origin}: precisions must be a non-empty subset of {PRECISIONS}, got {bad}")
    if t.objective not in OBJECTIVES:
        raise TargetError(f"{origin}: objective must be one of {OBJECTIVES}, got {t.objective!r}")
    if not t.runtimes or any(r not in RUNTIMES for r in t.runtimes):
        raise TargetError(f"{origin}: runtimes must be a non-empty subset of {RUNTIMES}, got {list(t.runtimes)}")
    if t.tier not in TIERS:
        raise TargetError(f"{origin}: tier must be one of {TIERS}, got {t.tier!r}")
    if int(t.ram_bytes) <= 0 or int(t.flash_bytes) <= 0 or float(t.latency_budget_ms) <= 0:
        raise TargetError(f"{origin}: ram_bytes, flash_bytes and latency_budget_ms must be positive")
    return t


def _builtin_dir() -> Path:
    return Path(str(resources.files("edgewise.targets") / "profiles"))


def available() -> list[TargetProfile]:
    return [load_target(p.stem) for p in sorted(_builtin_dir().glob("*.toml"))]


def load_target(spec: str) -> TargetProfile:
    """A built-in name (`mcu-256k`, `cortex-a`, `edge-node`, `edge-server`) or a path to a .toml file."""
    path = Path(spec)
    if path.suffix != ".toml":
        path = _builtin_dir() / f"{spec}.toml"
        if not path.is_file():
            names = ", ".join(p.stem for p in sorted(_builtin_dir().glob("*.toml")))
            raise TargetError(f"unknown target {spec!r}: built-in targets are {names}, or pass a .toml path")
    elif not path.is_file():
        raise TargetError(f"target file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise TargetError(f"{path}: not valid TOML ({e})") from e
    return _parse(data, str(path))
