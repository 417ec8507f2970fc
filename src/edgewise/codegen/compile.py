"""compile: a bundle's int8 model -> C sources, a memory report, and the bundle updated to carry them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from edgewise.bundle import read_bundle, verify_bundle, write_bundle
from edgewise.codegen.emit import render
from edgewise.codegen.graph import IntGraph
from edgewise.codegen.lower import lower
from edgewise.codegen.planner import Plan, plan
from edgewise.errors import CodegenError
from edgewise.fsutil import atomic_dir, check_out
from edgewise.targets import TargetProfile


@dataclass
class Compiled:
    graph: IntGraph
    plan: Plan
    sources: dict[str, str]
    frontend: dict[str, int] = field(default_factory=dict)  # the front end's (audio, spectral) RAM and tables

    def figures(self) -> dict[str, Any]:
        return {"arena_bytes": self.plan.arena_bytes, "arena_lower_bound_bytes": self.plan.lower_bound_bytes,
                "planner": self.plan.strategy, "planner_tried": self.plan.tried,
                "constants_bytes": self.graph.flash_bytes(), "macs": self.graph.macs, "ops": len(self.graph.ops),
                **self.frontend}


def figures(model: onnx.ModelProto) -> dict[str, Any]:
    """What the C compiler would need for this int8 model, without writing any C: the arena (RAM), its
    live-tensor lower bound, the constants (flash), MACs and ops. Raises CodegenError if it cannot build it."""
    graph = lower(model)
    p = plan(graph)
    return Compiled(graph, p, {}).figures()


def compile_model(model: onnx.ModelProto, name: str = "model", labels: list[str] | None = None) -> Compiled:
    graph = lower(model)
    p = plan(graph)
    return Compiled(graph, p, render(graph, p, name, labels or []))


def add_frontend(c: Compiled, preprocessing: dict[str, Any], labels: list[str] | None = None,
                 postprocessing: dict[str, Any] | None = None) -> None:
    """The bundle's declared audio front end, in C, quantizing to the model's input (`frontend.py`), and
    the streaming keyword spotter over it (`stream.py`); or its sensor front end and the sensor stream."""
    if _add_sensor(c, preprocessing, postprocessing or {}):
        return
    if not preprocessing.get("audio"):
        return
    from edgewise.codegen.frontend import emit_audio_frontend, frontend_bytes
    from edgewise.codegen.stream import emit_stream, stream_bytes
    from edgewise.media.audio import AudioSpec
    from edgewise.media.recognize import Smoothing

    spec = AudioSpec.from_dict(preprocessing["audio"])
    smoothing = Smoothing.from_dict((postprocessing or {}).get("keyword_spotting"), spec.stride_ms)
    t_in = c.graph.tensors[c.graph.input]
    if t_in.size != spec.frames * spec.bins:
        raise CodegenError(f"the audio front end makes {spec.frames}x{spec.bins} features but the model takes "
                           f"{t_in.size} values")
    classes = c.graph.tensors[c.graph.output].size
    c.sources.update(emit_audio_frontend(spec, t_in.scale, t_in.zero_point))
    c.sources.update(emit_stream(spec, labels or [], classes, smoothing))
    c.frontend = {**frontend_bytes(spec), "stream_ram_bytes": stream_bytes(spec, classes, smoothing)}


def _add_sensor(c: Compiled, preprocessing: dict[str, Any], postprocessing: dict[str, Any]) -> bool:
    """The bundle's sensor front end (spectral features, or the standardized window itself) and the sensor
    stream, in C (`sensor.py`); False when it takes no sensor windows."""
    from edgewise.codegen.sensor import emit_raw_window, emit_sensor_stream, emit_spectral, sensor_bytes
    from edgewise.media.sensor import SensorInput

    sensor = SensorInput.from_preprocessing(preprocessing)
    if sensor is None:
        return False
    t_in = c.graph.tensors[c.graph.input]
    want = sensor.spectral.features if sensor.spectral else len(sensor.channels) * sensor.window
    if t_in.size != want:
        raise CodegenError(f"the sensor front end makes {want} values per window but the model takes {t_in.size}")
    threshold = postprocessing.get("threshold") if postprocessing.get("kind") == "anomaly" else None
    if sensor.spectral is not None:
        c.sources.update(emit_spectral(sensor.spectral, t_in.scale, t_in.zero_point))
    else:
        c.sources.update(emit_raw_window(sensor, t_in.scale, t_in.zero_point))
    c.sources.update(emit_sensor_stream(sensor, threshold))
    c.frontend = sensor_bytes(sensor)
    return True


def check_budget(c: Compiled, target: TargetProfile) -> None:
    """RAM: the arena; flash: the constants (code size comes from a real cross-build, see benchmarks)."""
    f = c.figures()
    ram = f["arena_bytes"] + f.get("frontend_ram_bytes", 0) + f.get("stream_ram_bytes", 0)
    flash = f["constants_bytes"] + f.get("frontend_tables_bytes", 0)
    what = " and the front end and stream" if c.frontend else ""
    if ram > target.ram_bytes:
        raise CodegenError(f"needs {ram / 1024:.1f} KB RAM for the arena{what}, {target.name} has "
                           f"{target.ram_bytes / 1024:.0f} KB")
    if flash > target.flash_bytes:
        raise CodegenError(f"needs {flash / 1024:.1f} KB flash for weights{what}, {target.name} has "
                           f"{target.flash_bytes / 1024:.0f} KB")


def compile_bundle(bundle: Path, out: Path, target: TargetProfile, update_bundle: bool = True,
                   packages: tuple[str, ...] = ()) -> Compiled:
    """Write the C sources and memory.json to `out` (all or nothing) and record them in the bundle; with
    `packages` ("arduino", "cmake"), also the sources packaged as such under out/arduino/<library>/ and
    out/cmake/ (see package.py)."""
    from edgewise.codegen.package import PACKAGES, export, library_name

    unknown = [p for p in packages if p not in PACKAGES]
    if unknown:
        raise CodegenError(f"unknown package kind {unknown[0]!r}; known: {', '.join(PACKAGES)}")
    check_out(out, CodegenError, inputs=(bundle,))
    manifest = verify_bundle(bundle)
    if update_bundle and (Path(bundle) / "signature").exists():
        raise CodegenError(f"{bundle} is signed: recording the C sources in it would void its signature. Compile "
                           "before signing, or pass --no-update-bundle to leave the bundle as it is")
    model = onnx.load(str(bundle / "model.onnx"))
    compiled = compile_model(model, manifest.name, manifest.labels)
    add_frontend(compiled, manifest.preprocessing or {}, manifest.labels, manifest.postprocessing)
    check_budget(compiled, target)
    figures = {**compiled.figures(), "target": target.name}
    with atomic_dir(out, error=CodegenError) as tmp:
        for fname, text in compiled.sources.items():
            (tmp / fname).write_text(text)
        (tmp / "memory.json").write_text(json.dumps(figures, indent=2))
        for kind in packages:
            root = tmp / kind / (library_name(manifest.name) if kind == "arduino" else "")
            for rel, text in export(kind, compiled.sources, manifest.name, manifest.version).items():
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_text(text)
    if update_bundle:
        files: dict[str, bytes | Path] = {n: bundle / n for n in read_bundle(bundle).files if not n.startswith("c/")}
        files.update({f"c/{n}": t.encode() for n, t in compiled.sources.items()})
        artifacts = {**manifest.artifacts, "c": figures}
        write_bundle(bundle, _with(manifest, artifacts=artifacts), files)
    return compiled


def _with(manifest, **changes):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return replace(manifest, files={}, **changes)
