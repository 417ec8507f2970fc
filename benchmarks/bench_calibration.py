"""Calibration time by method, and entropy's threshold search: ours (ORT's KL search in numpy, at most 4096
thresholds tried, geometrically spaced where there are more) against ORT's own, on the same model and samples in one run. Also how far apart the two
searches put each tensor's range, and the int8 model's fidelity with each.

Run: .venv/bin/python benchmarks/bench_calibration.py [--samples 16]   (writes the 'calibration' section)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, cpu_flags, machine, table, write_section  # noqa: E402

from edgewise.data import load_splits  # noqa: E402
from edgewise.optimize import quantize  # noqa: E402
from edgewise.optimize.quantize import Quantizer, StaticConfig  # noqa: E402
from edgewise.profile.fidelity import fidelity, infer_task  # noqa: E402
from edgewise.profile.measure import run_outputs  # noqa: E402
from edgewise.profile.runtime import make_session  # noqa: E402
from edgewise.source import load_source  # noqa: E402
from edgewise.zoo import corpus  # noqa: E402

ORT_LABEL = "Entropy, ORT's search"
ORT_SEARCH = quantize._calibrate.HistogramCollector.__mro__[1].get_entropy_threshold  # ORT's, before ours


def _calibrate(model, train, samples: int, method: str, ort_search: bool):  # type: ignore[no-untyped-def]
    """(seconds, per-tensor ranges, int8 model) of one calibration in a fresh quantizer."""
    ours = quantize._WideHistograms.get_entropy_threshold
    if ort_search:
        quantize._WideHistograms.get_entropy_threshold = ORT_SEARCH
    q = Quantizer(model, train, samples)
    try:
        start = time.perf_counter()
        ranges = q.ranges(method)
        seconds = time.perf_counter() - start
        return seconds, ranges, q.static(StaticConfig(method=method))
    finally:
        quantize._WideHistograms.get_entropy_threshold = ours
        q.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("models", nargs="*", default=["yolov8n", "yolov8n-shapes", "efficientnet-b0"])
    args = ap.parse_args()
    rows = []
    for name in args.models:
        path, data = corpus.build(name, WORK / "corpus" / name)
        model, splits = load_source(path).model, load_splits(data)
        val = splits.val
        ref = run_outputs(make_session(model), val)
        task = infer_task(ref, None, False)
        runs = {}
        for label, method, ort_search in (("MinMax", "minmax", False), ("Percentile", "percentile", False),
                                          ("Entropy, ours", "entropy", False), (ORT_LABEL, "entropy", True)):
            seconds, ranges, int8 = _calibrate(model, splits.train, args.samples, method, ort_search)
            fid = fidelity(task, run_outputs(make_session(int8), val), ref, None)
            runs[label] = (seconds, ranges, fid)
            print(f"{name}: {label} {seconds:.1f} s, {fid.kind} {fid.score:.3f}", flush=True)
        ours, theirs = runs["Entropy, ours"][1], runs[ORT_LABEL][1]
        widths = [(abs((ours[t][1] - ours[t][0]) / (theirs[t][1] - theirs[t][0])) if theirs[t][1] != theirs[t][0]
                   else 1.0) for t in theirs]
        same = sum(ours[t] == theirs[t] for t in theirs)
        base = runs["MinMax"][0]
        rows.append([name, *[f"{runs[k][0]:.1f} s ({runs[k][0] / base:.1f}x)" for k in runs],
                     f"{same} of {len(theirs)}", f"{min(widths):.2f}-{max(widths):.2f}",
                     f"{runs['Entropy, ours'][2].score * 100:.1f}% / {runs[ORT_LABEL][2].score * 100:.1f}%"])
    md = (f"## Calibration time, and entropy's threshold search\n\nMachine: {machine()}; CPU flags: {cpu_flags()}. "
          f"{args.samples} calibration samples, one batch at a time (as the search calibrates), each method in a fresh "
          "quantizer; time to calibrate every tensor (MinMax = 1.0x). 'Entropy, ORT's search' swaps ORT's own "
          "`get_entropy_threshold` back in. Same ranges: tensors whose two entropy ranges are identical; range width "
          "ours / ORT's: the spread over the others (where a histogram offers more than 4096 thresholds, ours tries 4096 "
          "of them, geometrically spaced, at full resolution). "
          "Fidelity: the int8 model's agreement with the starting model on the validation split, ours / ORT's:\n\n"
          + table(["model", "MinMax", "Percentile", "Entropy, ours", "Entropy, ORT's search", "same ranges",
                   "range width ours / ORT's", "entropy int8 fidelity"], rows))
    write_section("calibration", md)


if __name__ == "__main__":
    main()
