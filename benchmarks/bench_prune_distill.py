"""Structured pruning and distillation: parameters removed vs accuracy kept, on digits.

Run: .venv/bin/python benchmarks/bench_prune_distill.py   (writes the 'prune-distill' section)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, machine, table, trained, write_section  # noqa: E402

from edgewise.data import load_splits  # noqa: E402
from edgewise.optimize.distill import distill, pick_student_width  # noqa: E402
from edgewise.optimize.prune import structured_prune  # noqa: E402
from edgewise.profile import make_session, measure_latency  # noqa: E402
from edgewise.zoo import TrainConfig, count_params, evaluate_torch, load_trained  # noqa: E402
from edgewise.zoo.export import export_onnx  # noqa: E402


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for arch, data, epochs in (("cnn", "digits", 25), ("dscnn", "digits", 25), ("cnn1d", "basicmotions", 40)):
        splits = load_splits(data)
        tm = load_trained(trained(arch, data, epochs))
        base_acc = evaluate_torch(tm.module, splits.test)
        pruned = structured_prune(tm.module, 0.65, splits, TrainConfig(epochs=10, lr=1e-3, min_steps=300))
        width = pick_student_width(arch, tm.sample_shape, len(tm.labels), tm.params)
        student = distill(tm.module, arch, width, splits, TrainConfig(epochs=40, min_steps=600))
        files = {}
        for name, module in (("fp32", tm.module), ("pruned", pruned), ("student", student)):
            files[name] = export_onnx(module, tm.sample_shape, WORK / f"{arch}-{name}.onnx")
        lat = measure_latency([make_session(files[k]) for k in ("fp32", "pruned", "student")], splits.test.x[0], runs=300)
        size = {k: (WORK / f"{arch}-{k}.onnx").stat().st_size for k in files}
        for name, module, stats in (("structured prune 35%", pruned, lat[1]), (f"distill (width {width})", student, lat[2])):
            acc = evaluate_torch(module, splits.test)
            key = "pruned" if "prune" in name else "student"
            rows.append([f"{arch} / {data}", name, f"{tm.params:,} -> {count_params(module):,}",
                         f"{tm.params / count_params(module):.2f}x", f"{base_acc * 100:.2f}%", f"{acc * 100:.2f}%",
                         f"{(base_acc - acc) * 100:+.2f}", f"{size['fp32'] / size[key]:.2f}x",
                         f"{lat[0].p50_ms / stats.p50_ms:.2f}x"])
    md = (f"## Structured pruning and distillation\n\nMachine: {machine()}. Test split accuracy; ONNX file size "
          "and batch-1 one-thread latency measured in the same run as the fp32 model.\n\n"
          + table(["model", "pass", "params", "fewer params", "fp32 acc", "after", "drop (pts)", "file smaller",
                   "speed vs fp32"], rows) + "\n")
    write_section("prune-distill", md)


if __name__ == "__main__":
    main()
