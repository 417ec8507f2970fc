"""Generate: the candidates worth trying for a target, most promising first, each built lazily from an fp32
parent (the starting model, or a pruned / distilled one) only when its turn comes."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgewise.data import Dataset, Splits
from edgewise.errors import EdgewiseError, OptimizeError
from edgewise.optimize.candidates import allowed, has_weight_matmul, recipe_static, static_configs
from edgewise.optimize.fuse import fuse
from edgewise.optimize.options import Log, SearchOptions
from edgewise.optimize.quantize import ORT_DEFAULTS, Quantizer, StaticConfig, quantize_int4_weights, to_fp16
from edgewise.optimize.sensitivity import auto_exclusions, mixed_precision, output_tail
from edgewise.profile import count_macs
from edgewise.source import Source
from edgewise.targets import TargetProfile
from edgewise.targets.profile import CPU

# Histogram calibration against MinMax calibration of the same samples, measured on this project's
# corpus (YOLOv8n, PP-OCR det/rec): Percentile 4.5-6x, Entropy 3-4x.
HISTOGRAM_COST = {"percentile": 6.0, "entropy": 4.0}


class NotApplicable(OptimizeError):
    """A pass with nothing to do on this model (no layer to keep in float, ...): no candidate at all."""


@dataclass
class Parent:
    """An fp32 model candidates derive from: the starting model, or a pruned / distilled one (built lazily)."""

    name: str
    description: str
    build: Callable[[], tuple[onnx.ModelProto, int, list[dict[str, Any]]]]
    model: onnx.ModelProto | None = None
    params: int = 0
    recipe: list[dict[str, Any]] = field(default_factory=list)
    macs: int = 0
    error: str | None = None
    quantizer: Quantizer | None = None
    quant_error: str | None = None

    def get(self) -> onnx.ModelProto:
        if self.error:
            raise OptimizeError(self.error)
        if self.model is None:
            try:
                self.model, self.params, self.recipe = self.build()
            except EdgewiseError as e:
                self.error = f"{self.name} model could not be built: {e}"
                raise OptimizeError(self.error) from e
            self.macs = count_macs(self.model)
        return self.model

    def quant(self, calibration: Dataset, samples: int) -> Quantizer:
        """The parent's quantizer, prepared once; a preparation failure rejects only int8 candidates."""
        if self.quant_error:
            raise OptimizeError(self.quant_error)
        if self.quantizer is None:
            try:
                self.quantizer = Quantizer(self.get(), calibration, samples)
            except EdgewiseError as e:
                self.quant_error = f"cannot prepare the model for quantization: {e}"
                raise OptimizeError(self.quant_error) from e
            except Exception as e:  # noqa: BLE001 - ORT's tools raise anything; only int8 candidates depend on it
                self.quant_error = f"cannot prepare the model for quantization: {str(e).splitlines()[0][:200]}"
                raise OptimizeError(self.quant_error) from e
        return self.quantizer

    def close(self) -> None:
        if self.quantizer is not None:
            self.quantizer.close()


@dataclass
class Plan:
    """A candidate not built yet: what it is, and how to build it from its parent."""

    id: str
    description: str
    parent: Parent
    precision: str
    recipe: list[dict[str, Any]]
    build: Callable[[], onnx.ModelProto]
    when: Callable[[], bool] = lambda: True  # decided when its turn comes (e.g. only if int8 missed)
    method: str = ""  # the calibration it needs, if any

    def predicted_s(self, took: dict[str, float]) -> float:
        """What building it will likely cost, from what similar steps took so far (0 when unknown).
        Histogram calibration (Percentile, Entropy) costs several MinMax calibrations."""
        q = self.parent.quantizer
        if self.method and q is not None and self.method not in q.calibrated and "minmax" in q.calibrated:
            return q.calibrated["minmax"] * HISTOGRAM_COST.get(self.method, 1.0) + took.get("static", 0.0)
        return took.get("static" if self.method else self.precision, 0.0)


def param_count(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(i.dims)) for i in model.graph.initializer)


def torch_parents(source: Source, splits: Splits, opts: SearchOptions, log: Log) -> list[Parent]:
    """Structured-pruned and distilled fp32 models (only for zoo models, which carry their torch module)."""
    tm = source.trained
    series = len(tm.sample_shape) == 2  # sensor windows train with augmentation, as `train` did

    def pruned() -> tuple[onnx.ModelProto, int, list[dict[str, Any]]]:
        from edgewise.optimize.prune import structured_prune
        from edgewise.zoo import TrainConfig, count_params
        from edgewise.zoo.export import export_onnx

        log(f"structured pruning (keep {opts.prune_keep:.0%} of channels) + fine-tuning")
        ft = TrainConfig(epochs=opts.finetune_epochs, lr=1e-3, min_steps=opts.finetune_min_steps, augment=series)
        module = structured_prune(tm.module, opts.prune_keep, splits, ft)
        with tempfile.TemporaryDirectory(prefix="edgewise-torch-") as tmp:
            model = export_onnx(module, tm.sample_shape, Path(tmp) / "pruned.onnx")
        n = count_params(module)
        return model, n, [{"pass": "prune", "kind": "structured-channel", "keep_ratio": opts.prune_keep,
                           "params_before": tm.params, "params_after": n,
                           "finetune_epochs": ft.epochs_for(len(splits.train))}]

    def distilled() -> tuple[onnx.ModelProto, int, list[dict[str, Any]]]:
        from edgewise.optimize.distill import distill, pick_student_width
        from edgewise.zoo import TrainConfig, count_params
        from edgewise.zoo.export import export_onnx

        width = pick_student_width(tm.arch, tm.sample_shape, len(tm.labels), tm.params)
        log(f"distilling a {tm.arch} student (width {width}) from the model")
        cfg = TrainConfig(epochs=opts.distill_epochs, min_steps=opts.distill_min_steps, augment=series)
        student = distill(tm.module, tm.arch, width, splits, cfg)
        with tempfile.TemporaryDirectory(prefix="edgewise-torch-") as tmp:
            model = export_onnx(student, tm.sample_shape, Path(tmp) / "student.onnx")
        n = count_params(student)
        return model, n, [{"pass": "distill", "student": tm.arch, "width": width, "temperature": 2.0,
                           "alpha": 0.5, "teacher_params": tm.params, "student_params": n}]

    out = []
    if opts.wants_parent("pruned"):
        out.append(Parent("pruned", "structured pruning, fine-tuned", pruned))
    if opts.wants_parent("distilled"):
        out.append(Parent("distilled", f"distilled {tm.arch} student", distilled))
    return out


def graph_parents(source: Source, splits: Splits, opts: SearchOptions, log: Log, over: Callable[[], bool],
                  progress: Callable[[str, int, int], None] = lambda _w, _d, _t: None) -> list[Parent]:
    """A channel-pruned copy of the ONNX graph itself, fine-tuned to the starting model's outputs on the
    training split: for models of any task that come without a torch module (imports, zoo detectors)."""

    def pruned() -> tuple[onnx.ModelProto, int, list[dict[str, Any]]]:
        from edgewise.optimize.graph_finetune import box_focus, finetune_to_outputs
        from edgewise.optimize.graph_prune import prune_channels
        from edgewise.profile.measure import run_outputs
        from edgewise.profile.runtime import make_session

        model, step = prune_channels(source.model, opts.prune_keep)
        train = splits.train
        log(f"channel pruning of the graph (keep {opts.prune_keep:.0%} of {step['channels_before']} channels in "
            f"{step['groups']} groups) + fine-tuning to the starting model's outputs on {len(train)} samples")
        teacher = run_outputs(make_session(source.model), train)
        focus = box_focus(teacher)
        if focus is not None:
            log("fine-tuning weighs each anchor's box by the starting model's confidence there")
        model, ft = finetune_to_outputs(model, np.asarray(train.x), teacher, opts.finetune_epochs, over=over,
                                        progress=lambda d, t: progress("fine-tuning the pruned graph", d, t),
                                        weights=focus)
        step["finetune"] = ft.as_dict()
        if ft.stopped_early:
            log(f"fine-tuning stopped by the time budget after {ft.steps} steps")
        n = param_count(model)
        return model, n, [dict(step, **{"pass": "prune", "params_before": param_count(source.model),
                                        "params_after": n})]

    from edgewise.optimize.graph_prune import prunable

    inputs = source.model.graph.input
    if (not opts.wants_parent("pruned") or splits.train.named or len(inputs) != 1
            or inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT):
        return []
    missing = [m for m in ("torch", "onnx2torch") if importlib.util.find_spec(m) is None]
    if missing:  # a device-side install (the core and [agent]) has neither
        log(f"graph pruning not tried: fine-tuning needs {' and '.join(missing)} (pip install 'edgewise[train]')")
        return []
    if not prunable(source.model):
        log("graph pruning not tried: no convolution's channels can be removed without touching a residual, "
            "concat or output")
        return []
    return [Parent("pruned", "graph channel pruning, fine-tuned to the starting model", pruned)]


def static_id(parent: str, cfg: StaticConfig, target: TargetProfile) -> str:
    if cfg == ORT_DEFAULTS and not target.int8_only:
        return f"{parent}-int8-ort-defaults"
    return (f"{parent}-int8-{cfg.method}" + ("-s7" if cfg.reduce_range else "")
            + ("" if cfg.weights_per_channel else "-per-tensor"))


def promise(cfg: StaticConfig) -> tuple[int, int, int]:
    """Static settings, most likely to win first: MinMax, then Percentile, then Entropy (its histograms
    are the slowest to calibrate); full-range weights before 7-bit; ORT's defaults after the first two."""
    method = {"minmax": 0, "percentile": 1, "entropy": 3}[cfg.method]
    if cfg == ORT_DEFAULTS:
        method = 2
    return (method, int(cfg.reduce_range), int(not cfg.weights_per_channel))


PARENT_SLACK_POINTS = 1.0  # how far past the tolerance a derived parent's fp32 may be and still get children


class Planner:
    """The candidates to try for one target, in the order they are worth trying."""

    def __init__(self, source: Source, splits: Splits, target: TargetProfile, opts: SearchOptions,
                 state: dict[str, Any], log: Log) -> None:
        self.source, self.splits, self.target, self.opts, self.state, self.log = source, splits, target, opts, state, log

    def saturates(self) -> bool:
        """Whether the CPU the candidates are judged on has int8 sums that saturate (x86 without VNNI): the
        device's with `--measure-on` (its agent says what it is), else this machine's."""
        if "saturates" not in self.state:
            from edgewise.profile import cpu

            if self.opts.measure_on:
                from edgewise.profile.remote import RemoteBench

                m = RemoteBench.at(self.opts.measure_on).device_machine()
                self.state["saturates"] = (cpu.saturates(str(m.get("arch", "")), m["cpu_flags"]) if m.get("cpu_flags")
                                           else cpu.int8_saturates())  # an agent too old to say: this machine
            else:
                self.state["saturates"] = cpu.int8_saturates()
        return bool(self.state["saturates"])

    def _whose_cpu(self) -> str:
        return "the device's CPU" if self.opts.measure_on else "this CPU"

    def quant(self, parent: Parent) -> Quantizer:
        first = parent.quantizer is None and parent.quant_error is None
        if first:
            self.log(f"{parent.name}: preparing and calibrating on "
                     f"{min(len(self.splits.train), self.opts.calibration_samples)} samples")
        q = parent.quant(self.splits.train, self.opts.calibration_samples)
        if first and q.prepared != PREP_FULL:
            self.state["notes"].append(f"{parent.name}: quantization preparation ran {q.prepared}")
        return q

    def plans(self, parents: list[Parent]) -> list[Plan]:
        t, opts = self.target, self.opts
        out: list[Plan] = []
        for p in parents:
            primary = p.name == "baseline"
            if not primary:
                out.append(Plan(f"{p.name}-fp32", p.description, p, "fp32", [], p.get))
            if "fp32" in t.precisions:
                out.append(Plan(f"{p.name}-fused", f"{p.description}; Conv+BN folded, ORT offline graph optimization",
                                 p, "fp32", [{"pass": "fuse"}], lambda p=p: self._fused(p)))
            if primary and t.cpu_beside_accelerator and self._accelerator_ran():
                out.append(self._cpu_plan(p))
            if primary and allowed("fp16", t) and t.accelerated:  # native on a GPU: tried before any int8
                out.append(self._fp16_plan(p))
            if "openvino" in t.runtimes:  # a pruned or distilled parent too: a smaller model on that runtime
                dev, on = t.openvino_device, "" if primary else f"{p.description}; "
                out.append(Plan(f"{p.name}-openvino-fp32", f"{on}OpenVINO on {dev}, fp32 (precision hint f32)", p,
                                 "fp32", [{"pass": "runtime", "runtime": "openvino", "device": dev, "precision": "f32"}],
                                 lambda p=p: self._openvino(p, None)))
                out.append(Plan(f"{p.name}-openvino-auto", f"{on}OpenVINO on {dev}, its default precision (bf16 on "
                                 "CPUs with AVX-512 BF16 or AMX, else f32)", p, "fp32",
                                 [{"pass": "runtime", "runtime": "openvino", "device": dev, "precision": "auto"}],
                                 lambda p=p: self._openvino(p, "auto")))
            if not primary and "openvino" in t.runtimes and allowed("int8", t):
                out += self._nncf_plans(p)
            if allowed("int8", t) or allowed("mixed", t):
                cfgs = sorted(static_configs(t, primary), key=promise)
                for k, cfg in enumerate(cfgs):
                    out.append(Plan(static_id(p.name, cfg, t), cfg.label(), p, "int8",
                                     [recipe_static(cfg, opts.calibration_samples)],
                                     lambda p=p, cfg=cfg: self.quant(p).static(cfg), method=cfg.method))
                    if k == 1 and primary and "openvino" in t.runtimes and allowed("int8", t):
                        out += self._nncf_plans(p)  # as promising as ORT's best two: tried early
            if primary and allowed("int8", t) and t.runs_onnxruntime:
                for ops in (("MatMul", "Gemm"), ("Conv", "MatMul", "Gemm")):
                    cid = "baseline-int8-dynamic" + ("-conv" if "Conv" in ops else "")
                    out.append(Plan(cid, f"int8 dynamic ({'+'.join(o.lower() for o in ops)})", p, "int8",
                                     [{"pass": "quantize", "mode": "dynamic", "weights": "int8", "ops": list(ops)}],
                                     lambda p=p, ops=ops: self.quant(p).dynamic(ops)))
            if primary and allowed("fp16", t) and t.runs_onnxruntime and not t.accelerated:
                out.append(self._fp16_plan(p))
            if primary and allowed("int4", t) and has_weight_matmul(self.source.model):
                out.append(Plan("baseline-int4-weights", "int4 weight-only MatMul/Gemm (block 32)", p, "int4",
                                 [{"pass": "quantize", "mode": "weight-only", "weights": "int4", "block_size": 32,
                                   "symmetric": True, "ops": ["MatMul", "Gemm"]}],
                                 lambda p=p: quantize_int4_weights(p.get())))
            if primary and allowed("mixed", t):
                cfg = self.first_static()
                out.append(Plan("baseline-mixed-auto", cfg.label() + " (auto: output-adjacent / high-range)", p,
                                 "mixed", [], lambda p=p, cfg=cfg: self._mixed_auto(p, cfg), method="percentile"))
                out.append(Plan("baseline-mixed-sensitivity", cfg.label() + " (by sensitivity)", p, "mixed", [],
                                 lambda p=p, cfg=cfg: self._mixed_sensitivity(p, cfg),
                                 when=lambda: not self.state["int8_within_tolerance"]))
        if parents and parents[0].name == "baseline" and "openvino" in t.runtimes and allowed("int8", t):
            # the costly fallback (a validation pass per layer put back): after every cheaper candidate
            out.append(self._nncf_plan(parents[0], "accuracy"))
        for pl in out:
            if pl.parent.name != "baseline" and pl.id != f"{pl.parent.name}-fp32":
                pl.when = self._while_parent_holds(pl.parent, pl.when)
        return [pl for pl in out if opts.wants(pl.id)]

    def _while_parent_holds(self, parent: Parent, when: Callable[[], bool]) -> Callable[[], bool]:
        """A pruned or distilled parent's other candidates are built only while its fp32 model is within the
        tolerance plus a point (`PARENT_SLACK_POINTS`): quantizing adds error, and a graph-pruned detector 5
        to 10 points down in fp32 had every quantized child as far down or further, at their building time."""
        fp32 = f"{parent.name}-fp32"

        def holds() -> bool:
            drop = self.state["drops"].get(fp32)
            if drop is not None and drop > self.opts.max_accuracy_drop + PARENT_SLACK_POINTS:
                note = (f"{parent.name}: its fp32 model is {drop:.2f} points down, so its other candidates "
                        "(quantized, other runtimes) were not built")
                if note not in self.state["notes"]:
                    self.state["notes"].append(note)
                return False
            return when()

        return holds

    def _accelerator_ran(self) -> bool:
        """Whether the target's accelerator ran the starting model (here, or on the device with --measure-on):
        anywhere else a candidate pinned to the CPU would be timed on the same CPU as the others. Here, the
        provider note already says the figures are this machine's; on a device, a note says why."""
        if self.state.get("baseline_ran_on") != CPU:
            return True
        if self.opts.measure_on:
            self.state["notes"].append(f"baseline-fused-cpu not built: {self.target.execution_providers[0]} did "
                                       "not run the starting model on the device either")
        return False

    def _cpu_plan(self, p: Parent) -> Plan:
        """The fused model on the device's CPU instead of its accelerator: at batch 1 a small model can finish on
        the CPU before a GPU's launch and copy overheads are paid (the zoo's digits CNN: 1.9x faster on an H200
        host's CPU than on the H200)."""
        first = self.target.execution_providers[0]

        def build() -> onnx.ModelProto:
            from edgewise.profile.openvino import tagged

            model = self._fused(p)
            self.state["recipe"] = self.state["recipe"] + [{"pass": "runtime", "runtime": "onnxruntime",
                                                            "providers": [CPU]}]
            return tagged(model, f"onnxruntime:{CPU}")

        return Plan("baseline-fused-cpu", f"Conv+BN folded, on the CPU (ONNX Runtime {CPU}) instead of {first}", p,
                    "fp32", [{"pass": "fuse"}, {"pass": "runtime", "runtime": "onnxruntime", "providers": [CPU]}],
                    build)

    def first_static(self) -> StaticConfig:
        """The static setting tried first for this target: the base of mixed precision and sensitivity."""
        return sorted(static_configs(self.target, True), key=promise)[0]

    @staticmethod
    def _fp16_plan(p: Parent) -> Plan:
        return Plan("baseline-fp16", "float16 weights and activations, float32 inputs and outputs", p, "fp16",
                    [{"pass": "convert", "precision": "fp16", "keep_io_types": True}], lambda: to_fp16(p.get()))

    def _nncf_plans(self, p: Parent) -> list[Plan]:
        """NNCF's default int8 and the same with the output tail in float. A graph whose tail computes on its
        last layers' outputs (a detector's box decode: Add, Sub, Mul, Div on pixel coordinates) gets the tail
        variant first, since int8 there costs box tightness (YOLOv8n: 2.8 mAP@0.5:0.95 points), then the
        default; any other graph gets the tail variant only where the default missed the tolerance. Pruning
        leaves the tail whole, so the starting model's tail stands for every parent's."""
        decodes = any(n.op_type in ("Add", "Sub", "Mul", "Div") for n in output_tail(self.source.model))
        plans = [self._nncf_plan(p), self._nncf_plan(p, "tail", tail_first=decodes)]
        return plans[::-1] if decodes else plans

    def _nncf_plan(self, p: Parent, variant: str = "", tail_first: bool = False) -> Plan:
        """NNCF's int8 at its defaults; the same with the output tail (`sensitivity.output_tail`: a
        detector's box decode, the last layers) left in float ("tail": see `_nncf_plans` for when); and,
        when neither is within the tolerance, NNCF's accuracy control ("accuracy"): int8, then the layers
        that cost the most accuracy put back in float one by one until the validation score is within the
        tolerance again (scored as every candidate is)."""
        dev, plain = self.target.openvino_device, f"{p.name}-openvino-nncf-int8"
        how = {"": "post-training quantization", "tail": "post-training quantization, the output tail in float",
               "accuracy": "with accuracy control (layers back in float until within tolerance)"}[variant]
        step: dict[str, Any] = {"pass": "quantize", "tool": "nncf", "mode": "static", "format": "OpenVINO IR",
                                "calibration_samples": self.opts.calibration_samples}
        if variant == "accuracy":
            step.update(accuracy_control=True, max_drop_points=self.opts.max_accuracy_drop)
        if variant == "tail":
            step.update(float_ops="the output tail: the last compute layers and what follows them")
        step["overflow_fix"] = (f"all layers (7-bit weights: {self._whose_cpu()} has no VNNI)"
                                if self.saturates() else "first layer")

        def kept(cid: str) -> bool:  # built, scored, and within the tolerance
            drops = self.state["drops"]
            return cid in drops and self.opts.within_tolerance(drops[cid])

        tried = lambda *ids: any(i in self.state["drops"] for i in ids)  # noqa: E731
        tail = f"{plain}-tail"
        when = {"": lambda: True, "tail": lambda: tail_first or (tried(plain) and not kept(plain)),
                "accuracy": lambda: tried(plain, tail) and not kept(plain) and not kept(tail)}[variant]
        return Plan(plain + (f"-{variant}" if variant else ""), f"OpenVINO on {dev}, int8 by NNCF {how}", p,
                    "int8", [step, {"pass": "runtime", "runtime": "openvino", "device": dev,
                                    "files": ["model.xml", "model.bin"], "fallback": "model.onnx (fp32)"}],
                    lambda: self._openvino(p, f"int8-{variant}" if variant else "int8"), when=when)

    def _openvino(self, p: Parent, precision: str | None) -> onnx.ModelProto:
        """The model tagged for OpenVINO on the target's device: as it is, with precision hint f32 (None) or
        OpenVINO's own ("auto"), or ("int8") quantized by NNCF on OpenVINO's graph with the calibration
        samples, carried as an IR beside the fp32 ONNX. Where OpenVINO cannot run, the candidate is reported
        as not measurable here."""
        from edgewise.profile import openvino as ov

        why = ov.available()
        if why:
            raise OptimizeError(f"not measurable here: {why}")
        dev = self.target.openvino_device
        model = p.get()
        if precision is None:
            return ov.tagged(model, f"openvino:{dev}:f32")
        if precision == "auto":
            return ov.tagged(model, f"openvino:{dev}")
        try:
            import nncf
        except ImportError as e:
            raise OptimizeError("not measurable here: NNCF is not installed (pip install 'edgewise[openvino]')") from e
        import openvino

        from edgewise.profile.feeds import Feeder, model_inputs

        train = self.splits.train.head(self.opts.calibration_samples)
        feeder = Feeder(model_inputs(model), train)
        self.log(f"NNCF: calibrating int8 on {len(train)} samples, on OpenVINO's own graph")
        try:
            with tempfile.TemporaryDirectory(prefix="edgewise-ov-") as tmp:
                onnx.save(model, str(Path(tmp) / "model.onnx"))
                ov_model = openvino.convert_model(str(Path(tmp) / "model.onnx"))
            calibration = nncf.Dataset([feeder.one(i) for i in range(len(train))])
            ignored = self._tail_scope(model, ov_model) if precision == "int8-tail" else None
            advanced = _nncf_advanced(self.saturates())
            if self.saturates() and not self.state.get("overflow_logged"):
                self.state["overflow_logged"] = True
                self.log(f"NNCF: {self._whose_cpu()} has no VNNI, so int8 weights keep to 7 bits in every "
                         "layer (NNCF's overflow fix; its default fixes the first layer only)")
            with _quiet_nncf():
                if precision == "int8-accuracy":
                    q = self._nncf_accuracy_control(ov_model, calibration, len(train), advanced)
                else:
                    q = nncf.quantize(ov_model, calibration, subset_size=len(train), ignored_scope=ignored,
                                      advanced_parameters=advanced)
        except EdgewiseError:
            raise
        except Exception as e:  # NNCF and OpenVINO raise assorted errors for graphs they cannot handle
            raise OptimizeError(f"NNCF quantization failed: {str(e).strip().splitlines()[0][:200]}") from e
        # the bundle carries the IR for OpenVINO and the fp32 ONNX for a device without it. Accuracy control
        # validates its layers left in float at f32 (not OpenVINO's bf16 default), so they run so.
        return ov.with_ir(model, q, f"openvino:{dev}" + (":f32" if precision == "int8-accuracy" else ""))

    def _tail_scope(self, model: onnx.ModelProto, ov_model: Any) -> Any:
        """NNCF's ignored scope for the output tail: OpenVINO names the ops it converts after the ONNX nodes
        (a Conv or Gemm with a bias becomes `NAME/WithoutBiases` and an Add), or after the tensor they make
        when that is a graph output or the node has no name, so the tail's names carry over; what it folded
        into constants has none."""
        import nncf

        ends = {name for n in output_tail(model) for name in (n.name, *n.output) if name}
        tail = sorted(n for n in (op.get_friendly_name() for op in ov_model.get_ops())
                      if n in ends or n.rpartition("/")[0] in ends)
        if not tail:
            raise NotApplicable("no output tail to keep in float")
        self.log(f"NNCF: {len(tail)} ops of the output tail left in float")
        return nncf.IgnoredScope(names=tail, validate=False)

    def _nncf_accuracy_control(self, ov_model: Any, calibration: Any, samples: int, advanced: Any) -> Any:
        """`nncf.quantize_with_accuracy_control`, validated with the search's own score on its validation
        split. Its data items are sample numbers, so a score on some of them compares with the same samples
        of the starting model."""
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

        from edgewise.profile.feeds import Feeder, model_inputs

        val, score = self.splits.val, self.state["score"]
        feeder = Feeder(model_inputs(self.source.model), val)
        everything = list(range(len(val)))

        calls = {"all": 0, "some": 0}  # validations of the whole split, and of some samples (NNCF's ranking)

        def validate(compiled: Any, items: Any) -> tuple[float, None]:
            if sum(calls.values()) > 1 and self.state["building_over"]():  # NNCF has no deadline: a validation
                # stops it (not the first two: NNCF probes the callback with one sample, then scores the float model)
                raise _OutOfTime
            samples = [int(i) for i in items]
            calls["all" if samples == everything else "some"] += 1
            outs = feeder.run_each(lambda feed: compiled(feed).to_tuple(), samples)
            return score(outs, None if samples == everything else samples), None

        self.log(f"NNCF accuracy control: int8 within {self.opts.max_accuracy_drop:g} point(s) on {len(val)} "
                 f"validation samples, at most {ACCURACY_CONTROL_LAYERS} layers back in float")
        try:
            q = nncf.quantize_with_accuracy_control(
                ov_model, calibration, nncf.Dataset(everything, feeder.one), validate,
                max_drop=self.opts.max_accuracy_drop / 100, subset_size=samples,
                advanced_quantization_parameters=advanced,
                advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                    max_num_iterations=ACCURACY_CONTROL_LAYERS, ranking_subset_size=min(len(val), 100)))
        except _OutOfTime:
            passes = f"{calls['all']} validation pass" + ("" if calls["all"] == 1 else "es")
            raise OptimizeError(f"NNCF accuracy control stopped at the time budget after {passes} and "
                                f"{calls['some']} sample scores (give a larger --time-budget to let it finish)"
                                ) from None
        kept = sum(1 for op in q.get_ops() if op.get_type_name() == "FakeQuantize")
        self.log(f"NNCF accuracy control: {kept} quantizers left")
        return q

    def _fused(self, p: Parent) -> onnx.ModelProto:
        model, info = fuse(p.get())
        self.state["recipe"] = [{"pass": "fuse", **info}]
        return model

    def _mixed_auto(self, p: Parent, cfg: StaticConfig) -> onnx.ModelProto:
        q = self.quant(p)
        prepared = onnx.load(str(q.fp32))
        self.state["exclusions"] = auto_exclusions(prepared, q.ranges("minmax"), q.ranges("percentile"))
        if not self.state["exclusions"]:
            raise NotApplicable("no output-adjacent or high-range layer to keep in float")
        ex = replace(cfg, exclude=tuple(sorted(self.state["exclusions"])))
        self.state["recipe"] = [recipe_static(ex, self.opts.calibration_samples)]
        return q.static(ex)

    def _mixed_sensitivity(self, p: Parent, cfg: StaticConfig) -> onnx.ModelProto:
        q = self.quant(p)
        sens = self.state["measure_sensitivity"]()
        if not sens:
            raise NotApplicable("per-layer sensitivity was not measured")
        self.log("int8 misses the tolerance: keeping the most sensitive layers in float")
        found = mixed_precision(q, cfg, sens, self.state["acceptable"])
        if found is None:
            raise OptimizeError("no set of float layers brings int8 within the tolerance")
        model, keep = found
        mcfg = replace(cfg, exclude=keep)
        self.state["recipe"] = [recipe_static(mcfg, self.opts.calibration_samples)]
        return model


def _nncf_advanced(saturates: bool) -> Any:
    """NNCF's overflow fix on every layer where the CPU's int8 sums saturate (AVX2 without VNNI: there the
    trained YOLOv8n's int8 lost 8.6 mAP@0.5:0.95 points with NNCF's default, a first-layer-only fix); else
    NNCF's default."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    fix = OverflowFix.ENABLE if saturates else OverflowFix.FIRST_LAYER
    return AdvancedQuantizationParameters(overflow_fix=fix)


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF logs every step and draws its own progress bars on stdout; the search reports its own progress."""
    import logging

    import nncf

    level = logging.getLogger("nncf").level
    nncf.set_log_level(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf.set_log_level(level)


class _OutOfTime(Exception):
    """Raised inside NNCF's validation callback to end its accuracy control at the time budget."""


PREP_FULL = "shape inference and graph optimization"
ACCURACY_CONTROL_LAYERS = 16  # NNCF's accuracy control puts back at most this many layers in float (each costs a
# validation pass)
