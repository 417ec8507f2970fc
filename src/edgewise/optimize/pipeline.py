"""optimize end to end: load the model and data, search, and write bundle + reports atomically."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgewise.bundle import Manifest, write_bundle
from edgewise.data import Dataset, Splits, load_splits
from edgewise.fsutil import atomic_dir, check_out
from edgewise.media import ImageSpec, postprocessing_for, spec_from_data
from edgewise.modelio import image_size, inputs, outputs
from edgewise.optimize.search import (
    Log,
    Progress,
    SearchOptions,
    SearchResult,
    closest,
    final_runs,
    finalize,
    search,
)
from edgewise.profile.fidelity import KINDS, TRUTH_KIND
from edgewise.profile.report import render_html, render_json
from edgewise.source import Source, fit_data, load_source
from edgewise.targets import TargetProfile


@dataclass
class OptimizeOutcome:
    result: SearchResult
    out: Path
    bundle: Path | None
    report: dict[str, Any]


def _report(source: Source, result: SearchResult, opts: SearchOptions, splits: Splits) -> dict[str, Any]:
    from edgewise.profile.fidelity import ground_truth

    task = result.task
    labelled = task is not None and ground_truth(task, splits.val) is not None
    return {
        "model": source.name,
        "target": asdict(result.target),
        "max_accuracy_drop": opts.max_accuracy_drop,
        "task": task.as_dict() if task else None,
        "accuracy_kind": TRUTH_KIND.get(task.name, "accuracy") if task and labelled else (
            "top1_agreement_with_fp32" if task is None or task.name == "classification"
            else f"{KINDS[task.name]}_with_fp32"),
        "budgets": {"max_latency_ms": opts.max_latency_ms, "max_ram_bytes": opts.max_ram_bytes,
                    "max_flash_bytes": opts.max_flash_bytes, "time_budget_s": opts.time_budget_s,
                    "latency_preference_ms": result.target.latency_budget_ms},
        "data": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "why": result.why,
        "chosen": result.chosen.summary() if result.chosen else None,
        "baseline": result.baseline.summary(),
        "candidates": [c.summary() for c in [result.baseline] + result.candidates],
        "sensitivity": result.sensitivity,
        "exclusions": result.exclusions,
        "notes": result.notes,
        "not_tried": result.not_tried,
        "closest": [{"id": c.id, "lacks": c.violations} for c in closest(
            [result.baseline] + result.candidates)] if result.chosen is None else [],
        "final": result.final,
    }


def optimize(model_path: Path, data: str, target: TargetProfile, out: Path, opts: SearchOptions | None = None,
             name: str | None = None, version: str = "0.1.0", log: Log = lambda _m: None,
             progress: Progress = lambda _w, _d, _t: None, declared: dict[str, Any] | None = None,
             labels: list[str] | None = None) -> OptimizeOutcome:
    """`declared`: what a `--preprocess` TOML says ([image] preprocessing, [postprocess] thresholds);
    `labels`: class names (a detector's, say), overriding the data's."""
    opts = opts or SearchOptions()
    check_out(out, inputs=(model_path,))
    if declared and "image" in declared:
        ImageSpec.from_dict(declared["image"])  # a malformed declaration fails before the search, not after
    source = load_source(model_path)
    source, splits = fit_data(source, load_splits(data, size=image_size(source.model)))
    if labels:
        source.labels = list(labels)
    if source.postprocessing.get("kind") == "anomaly" and not opts.task:
        opts = replace(opts, task="anomaly")
    result = search(source, splits, target, opts, log, progress)
    if result.chosen is not None:
        log("measuring the chosen model against the starting model on the test split")
        finalize(result, splits, final_runs(result, opts.time_budget_s), opts.max_accuracy_drop)
        if result.task is not None and result.task.name == "anomaly":
            source.postprocessing = _anomaly_threshold(source, result.chosen, result, splits)
    report = _report(source, result, opts, splits)
    bundle_path = None
    with atomic_dir(out) as tmp:
        (tmp / "report.json").write_text(render_json(report))
        (tmp / "report.html").write_text(render_html(report))
        if result.chosen is not None and result.chosen.model is not None:
            manifest = _manifest(source, result, name or source.name, version, splits.train, declared)
            from edgewise.profile.openvino import ir_files

            write_bundle(tmp / "bundle", manifest, {"model.onnx": result.chosen.model.SerializeToString(),
                                                    **ir_files(result.chosen.model)})
            bundle_path = out / "bundle"
    return OptimizeOutcome(result, out, bundle_path, report)


def _manifest(source: Source, result: SearchResult, name: str, version: str, train: Dataset,
              declared: dict[str, Any] | None = None) -> Manifest:
    chosen = result.chosen
    assert chosen is not None and chosen.model is not None
    m = chosen.model
    # The range the model saw in training, widened by 10% each way: devices refuse inputs far outside it
    # (a wrong scale or a broken sensor), instead of answering nonsense confidently.
    preprocessing = _jsonable(source.preprocessing)
    if not train.named:
        lo, hi = float(train.x.min()), float(train.x.max())
        if "spectral" in preprocessing:  # the front end clips: all it can make (an anomaly is out of training's range)
            clip = float(preprocessing["spectral"].get("clip", 8.0))
            lo, hi = -clip, clip
        pad = 0.1 * max(hi - lo, 1e-6)
        preprocessing["input_range"] = [lo - pad, hi + pad]
    task = result.task
    image = declared.get("image") if declared else None
    if image is None and task is not None and task.name in ("classification", "detection", "ctc") and not train.named:
        spec = spec_from_data(source.preprocessing, train.sample_shape)
        if spec is not None:  # detectors are fed letterboxed images, as YOLO exports expect
            image = replace(spec, resize="letterbox" if task.name == "detection" else spec.resize).as_dict()
    if image is not None:
        preprocessing["image"] = ImageSpec.from_dict(image).as_dict()
    labels = list(source.labels)
    if task is not None and task.name == "ctc" and task.alphabet:  # what the agent reads its answers with
        labels = list(task.alphabet)
    if task is not None and task.name == "detection" and task.layout is not None:
        classes = _detector_classes(outputs(chosen.model), task.layout)
        if classes and len(labels) != classes:  # numbered from the head's anchor axis by fit_data: renumber
            labels = [str(i) for i in range(classes)]
    post = postprocessing_for(task, labels) if task is not None else {}
    if task is not None and task.name == "anomaly":
        post = dict(source.postprocessing)  # its threshold recalibrated for the chosen model (_anomaly_threshold)
    post.update((declared or {}).get("postprocess", {}))
    metrics = {k: v for k, v in result.final.items() if not isinstance(v, np.generic)}
    return Manifest(
        runtime=_runtime(chosen.model, result.target),
        name=name, version=version, target=result.target.name,
        inputs=[s.as_dict() for s in inputs(m)], outputs=[s.as_dict() for s in outputs(m)],
        labels=labels, preprocessing=preprocessing,
        precision=chosen.precision, recipe=[{"candidate": chosen.id}] + chosen.recipe, metrics=_jsonable(metrics),
        task=task.name if task else "", postprocessing=_jsonable(post))


def _anomaly_threshold(source: Source, chosen: Any, result: SearchResult, splits: Splits) -> dict[str, Any]:
    """The anomaly threshold for the chosen model. Training calibrated one for the starting model (out of
    fold, on windows it never saw); int8 shifts the scores a little, so it is scaled by how the chosen
    model's mean score on validation's normal windows compares with the starting model's. A model without
    one (an imported detector) is calibrated on validation's normal windows for a 1% false-alarm rate.
    The test split's false-alarm and detection rates at it go into the metrics."""
    from edgewise.media import anomaly as an
    from edgewise.optimize.measure import Runner

    post = dict(source.postprocessing or {"kind": "anomaly", "score": "mean_square", "false_alarm_rate": 0.01})
    runner = Runner(result.target)
    val, test = splits.val, splits.test
    normal = an.normal_index(val.labels, val.preprocessing) if val.labels else 0
    calm = val if val.y is None else val.subset(np.flatnonzero(val.y == normal), "normal")
    s_val = an.scores(runner.outputs(chosen.model, calm)[0])
    if "threshold" in post:
        s_ref = an.scores(runner.outputs(result.baseline.model, calm)[0])
        thr = float(post["threshold"]) * float(s_val.mean() / max(s_ref.mean(), 1e-12))
    else:
        thr = an.threshold(s_val, float(post.get("false_alarm_rate", 0.01)))
    s_test = an.scores(runner.outputs(chosen.model, test)[0])
    bad = np.zeros(len(test), bool) if test.y is None else test.y != normal
    result.final.update({f"anomaly_{k}": v for k, v in an.evaluate(s_test, bad, thr).items()})
    return {**post, "kind": "anomaly", "threshold": thr}


def _runtime(model: Any, target: TargetProfile) -> dict[str, Any]:
    """How the chosen model was measured, for the device to run it the same way: the engine (and OpenVINO's
    device and precision hint, or ORT's providers) and the thread count. Empty for targets that run generated C."""
    from edgewise.profile.openvino import parse_runtime, runtime_of
    from edgewise.profile.runtime import pinned_providers

    if not target.runs_onnxruntime:
        return {}
    rt = runtime_of(model)
    if rt.startswith("openvino"):
        device, precision = parse_runtime(rt)
        return {"engine": "openvino", "device": device, **({"precision": precision} if precision else {}),
                "threads": target.threads, "fallback": "onnxruntime:CPUExecutionProvider"}
    pinned = pinned_providers(rt)  # a GPU target's model chosen on the device's CPU
    return {"engine": "onnxruntime", "providers": list(pinned or target.execution_providers),
            "threads": target.threads}


def _detector_classes(specs: list[Any], layout: Any) -> int | None:
    """How many classes a detector's head scores, from its output shapes."""
    try:
        if layout.kind == "yolo":
            dims = [d for d in specs[layout.boxes].shape if d != 1]
            return int(dims[0] if layout.anchors_last else dims[1]) - 4
        dims = [d for d in specs[layout.scores].shape if d != 1]
        return int(dims[0] if layout.anchors_last else dims[-1])
    except (IndexError, TypeError, ValueError):
        return None


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))

