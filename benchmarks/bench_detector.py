"""The zoo's detector on the bundled detection set, and what an image costs the agent beyond inference.

1. tinydet trained on `shapes` (96x96, 3 classes), then `optimize` for edge-node. On the test split, each
   runtime's mAP@0.5 and mAP@0.5:0.95 against the set's ground-truth boxes, and batch-1 one-thread latency
   measured in turns of blocks: ORT fp32 (the starting model), the chosen int8 model, ORT `quantize_static` at
   its defaults, OpenVINO fp32 and OpenVINO + NNCF int8 (default settings).
2. `/predict` overhead for a 640x480 JPEG: the agent's whole image path (decode at reduced scale, letterbox, inference,
   decode of the head, NMS, boxes back to the picture's pixels) against bare `session.run` on the prepared
   tensor, in process, interleaved; for the chosen tinydet and for YOLOv8n (ultralytics yaml, 320x320,
   80 classes, random weights: a realistic head size and anchor count, 2,100 anchors).

Run: .venv/bin/python benchmarks/bench_detector.py   (needs '.[bench]'; writes the 'detector' section)
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, cpu_flags, machine, table, trained, write_section  # noqa: E402
from bench_corpus import OpenVino, Ort, _interleaved, _outputs  # noqa: E402

from edgewise.data import load_splits  # noqa: E402
from edgewise.modelio import load_onnx  # noqa: E402
from edgewise.optimize.pipeline import optimize  # noqa: E402
from edgewise.optimize.quantize import ORT_DEFAULTS, Quantizer  # noqa: E402
from edgewise.optimize.search import SearchOptions  # noqa: E402
from edgewise.profile.feeds import Feeder, session_inputs  # noqa: E402
from edgewise.profile.fidelity import fidelity, ground_truth  # noqa: E402
from edgewise.targets import load_target  # noqa: E402

EPOCHS = 30


def accuracy_and_latency() -> tuple[list[list[object]], dict]:
    import nncf
    import openvino as ov

    t0 = time.perf_counter()
    model_dir = trained("tinydet", "shapes", EPOCHS)
    train_s = time.perf_counter() - t0
    out = WORK / "det-opt"
    outcome = optimize(model_dir, "shapes", load_target("edge-node"), out, SearchOptions(time_budget_s=120))
    r = outcome.result
    splits = load_splits("shapes")
    test = splits.test
    base = Ort(load_onnx(model_dir / "model.onnx"))
    q = Quantizer(base_model := load_onnx(model_dir / "model.onnx"), splits.train, 256)
    defaults = q.static(ORT_DEFAULTS)
    q.close()
    feeder = Feeder(session_inputs(base.sess), test)
    feed = feeder.one(0)
    calib = Feeder(session_inputs(base.sess), splits.train.head(300))
    ov_int8 = nncf.quantize(
        ov.convert_model(str(model_dir / "model.onnx")),
        nncf.Dataset([calib.one(i) for i in range(len(calib))]),
        subset_size=300,
    )
    runners = {
        "ORT fp32 (start)": base,
        f"edgewise ({r.chosen.id})": Ort(load_onnx(outcome.bundle / "model.onnx")),
        "ORT quantize_static defaults": Ort(defaults),
        "OpenVINO fp32": OpenVino(ov.convert_model(str(model_dir / "model.onnx")), feed),
        "OpenVINO + NNCF int8": OpenVino(ov_int8, feed),
    }
    ref = _outputs(base, feeder, len(test))
    truth = ground_truth(r.task, test)
    fids = {k: fidelity(r.task, _outputs(v, feeder, len(test)), ref, truth) for k, v in runners.items()}
    ms = dict(zip(runners, _interleaved(list(runners.values()), feed, runs=300)))
    base_ms = ms["ORT fp32 (start)"]
    rows = [
        [
            k,
            f"{f.details['map50'] * 100:.2f}%",
            f"{f.details['map50_95'] * 100:.2f}%",
            f"{(fids['ORT fp32 (start)'].details['map50_95'] - f.details['map50_95']) * 100:+.2f}",
            f"{ms[k]:.3f}",
            f"{base_ms / ms[k]:.2f}x",
        ]
        for k, f in fids.items()
    ]
    del base_model
    meta = {
        "train_s": train_s,
        "epochs": EPOCHS,
        "bundle": outcome.bundle,
        "test": len(test),
        "params": int(sum(np.prod(i.dims) for i in load_onnx(model_dir / "model.onnx").graph.initializer)),
    }
    return rows, meta


def _photo_jpeg(w: int = 640, h: int = 480) -> bytes:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from edgewise.data.shapes import render

    photos = [Image.fromarray(im) for im in load_sample_images().images]
    img, _ = render(480, np.random.default_rng(5), photos)
    canvas = Image.fromarray(load_sample_images().images[0]).resize((w, h))
    canvas.paste(Image.fromarray(img), ((w - 480) // 2, 0))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _yolov8n_bundle() -> Path:
    from edgewise.zoo import corpus

    out = WORK / "det-yolov8n-320"
    if not (out / "opt" / "bundle").is_dir():
        out.mkdir(parents=True, exist_ok=True)
        corpus.yolov8n_onnx(out / "yolov8n.onnx", 320)
        optimize(
            out / "yolov8n.onnx",
            "photos:320",
            load_target("edge-node"),
            out / "opt",
            SearchOptions(only=("baseline-fused",), measure_memory=False, latency_runs=5, task="detection"),
            declared={"image": {"size": [320, 320], "resize": "letterbox", "scale": 1 / 255}},
            labels=[f"class{i}" for i in range(80)],
        )
    return out / "opt" / "bundle"


def overhead(bundle: Path, jpeg: bytes, runs: int = 200) -> list[object]:
    from edgewise.agent.runner import AgentConfig, build_agent
    from edgewise.bundle import read_bundle
    from edgewise.media import ImageSpec, decode, detect, prepare

    name = read_bundle(bundle).name
    agent = build_agent(
        AgentConfig(bundles=[bundle], tier="server", data_dir=WORK / f"det-agent-{name}", samples_max_mb=0)
    )
    inf = agent.inference
    assert inf is not None
    m = inf.models.get(name)
    spec = ImageSpec.from_dict(m.manifest.preprocessing["image"])
    prepared = prepare(decode(jpeg, spec), spec)
    feed = {m.input_name: prepared.tensor}
    outs = m.session.run(None, feed)
    post, labels = m.manifest.postprocessing, list(m.manifest.labels)
    steps = {
        "whole image path": lambda: inf.answer_image(name, jpeg),
        "bare session.run": lambda: m.session.run(None, feed),
        "decode": lambda: decode(jpeg, spec),
        "letterbox + scale": lambda: prepare(decode(jpeg, spec), spec),
        "head decode + NMS": lambda: detect(outs, post, prepared, labels),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(10):
        for f in steps.values():
            f()
    for _ in range(runs):
        for k, f in steps.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    agent.close()
    p50 = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    p50["letterbox + scale"] -= p50["decode"]
    return [
        name,
        f"{spec.size[0]}x{spec.size[1]}",
        f"{p50['whole image path']:.2f}",
        f"{p50['bare session.run']:.2f}",
        f"{p50['whole image path'] - p50['bare session.run']:.2f}",
        f"{p50['whole image path'] / p50['bare session.run']:.2f}x",
        f"{p50['decode']:.2f}",
        f"{p50['letterbox + scale']:.2f}",
        f"{p50['head decode + NMS']:.2f}",
    ]


def main() -> None:
    rows, meta = accuracy_and_latency()
    for r in rows:
        print(r, flush=True)
    jpeg = _photo_jpeg()
    over = [overhead(meta["bundle"], jpeg), overhead(_yolov8n_bundle(), jpeg)]
    for r in over:
        print(r, flush=True)
    md = (
        f"Machine: {machine()}; CPU flags: {cpu_flags()}. tinydet ({meta['params']:,} parameters) trained "
        f"{meta['epochs']} epochs on `shapes` (480 training images)"
        + (f" in {meta['train_s']:.0f} s" if meta["train_s"] >= 1 else " (cached from an earlier run)") + "; `optimize "
        f"--target edge-node` (its tolerance: 1 point of mAP@0.5:0.95 on the validation split). Test split: "
        f"{meta['test']} images; mAP against the set's boxes; latency batch 1, one thread, interleaved, p50:\n\n"
        + table(["runtime", "mAP@0.5", "mAP@0.5:0.95", "mAP@0.5:0.95 drop (points)", "ms", "speed vs start"], rows)
        + "\n\n`/predict` with a 640x480 JPEG (in process, p50 of 200 interleaved runs, ms): the agent's whole "
        "image path against bare inference on the prepared tensor, and the parts of the difference:\n\n"
        + table(
            [
                "bundle",
                "input",
                "whole path",
                "bare run",
                "overhead",
                "ratio",
                "decode",
                "letterbox + scale",
                "head decode + NMS",
            ],
            over,
        )
    )
    write_section("detector", md)


if __name__ == "__main__":
    main()
