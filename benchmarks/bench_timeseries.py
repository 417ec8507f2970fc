"""Sensor-series classification against ROCKET, the time-series baseline a practitioner would reach for.

For BasicMotions (6-axis smartwatch), GunPoint and ArrowHead (aeon's bundled sets), on edgewise's seeded
60/20/20 split: aeon's RocketClassifier (2,000 kernels) fitted on train + validation and scored on test,
against `train --model cnn1d` (per-channel standardization, augmentation, at least 1,000 steps) and the
int8 model `optimize --target mcu-256k` chooses, on the same test split. RAM and flash of the chosen model
come from the C compiler's plan and `arm-none-eabi-size` (-O2, Cortex-M4).

Run: .venv/bin/python benchmarks/bench_timeseries.py   (writes the 'timeseries' section of RESULTS.md)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, cpu_flags, machine, table, write_section  # noqa: E402

from edgewise.codegen.compile import compile_bundle  # noqa: E402
from edgewise.codegen.toolchain import arm_sizes  # noqa: E402
from edgewise.data import load_splits  # noqa: E402
from edgewise.optimize.pipeline import optimize  # noqa: E402
from edgewise.optimize.search import SearchOptions  # noqa: E402
from edgewise.targets import load_target  # noqa: E402
from edgewise.zoo import TrainConfig, train  # noqa: E402

SETS = ("basicmotions", "gunpoint", "arrowhead")


def main() -> None:
    from aeon.classification.convolution_based import RocketClassifier

    rows = []
    for name in SETS:
        s = load_splits(name)
        t0 = time.perf_counter()
        rocket = RocketClassifier(n_kernels=2000, random_state=0).fit(np.concatenate([s.train.x, s.val.x]),
                                                                       np.concatenate([s.train.y, s.val.y]))
        acc_r = float((rocket.predict(s.test.x) == s.test.y).mean())
        t_r = time.perf_counter() - t0
        t0 = time.perf_counter()
        tm = train("cnn1d", s, TrainConfig())
        t_c = time.perf_counter() - t0
        out = WORK / f"ts-{name}"
        tm.save(out / "train")
        res = optimize(out / "train", name, load_target("mcu-256k"), out / "mcu", SearchOptions(measure_memory=False))
        assert res.bundle is not None, res.result.why
        acc_8 = res.result.final["accuracy"]
        compiled = compile_bundle(res.bundle, out / "c", load_target("mcu-256k"), update_bundle=False)
        f = compiled.figures()
        sizes = arm_sizes(out / "c", out)
        gap = 100 * (acc_r - acc_8)
        rows.append([name, f"{len(s.train)}/{len(s.val)}/{len(s.test)}", f"{100 * acc_r:.1f}% ({t_r:.1f} s)",
                     f"{100 * tm.metrics['test_accuracy']:.1f}% ({t_c:.1f} s)",
                     f"{100 * acc_8:.1f}% ({res.result.chosen.id.removeprefix('baseline-')})", f"{gap:+.1f}",
                     f"{(sizes['text'] + sizes['data']) / 1024:.1f} KB", f"{(sizes['bss'] + sizes['data']) / 1024:.1f} KB"
                     f" (arena {f['arena_bytes'] / 1024:.1f} KB)"])
        print(rows[-1], flush=True)
    md = (
        f"Machine: {machine()}; CPU flags: {cpu_flags()}. edgewise's seeded 60/20/20 split of each set (aeon's "
        "train and test pooled); ROCKET (aeon `RocketClassifier`, 2,000 kernels) fitted on train + validation; "
        "cnn1d trained with the default recipe (30 epochs or at least 1,000 steps, random scaling, shift and "
        "jitter); int8 = the model `optimize --target mcu-256k` chose (pruning and distillation tried), on the test "
        "split. Flash and static RAM: `arm-none-eabi-size` of model.c + ew_kernels.c (-O2, Cortex-M4; these sets "
        "record no sampling rate, so no sensor stream is generated; a logger CSV's bundle adds its window ring):\n\n"
        + table(["set", "train/val/test", "ROCKET", "cnn1d fp32", "cnn1d int8, mcu-256k", "points behind ROCKET",
                 "flash", "static RAM"], rows)
        + "\n\nGoal: the int8 MCU model within 3 points of ROCKET on each set. Test splits are small (16, 40 and "
        "42 series): one series is 6.3, 2.5 and 2.4 points."
    )
    write_section("timeseries", md)


if __name__ == "__main__":
    main()
