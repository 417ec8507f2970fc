"""int4 weight-only quantization of MatMul/Gemm weights: bytes and accuracy, on the zoo MLP (digits).

Run: .venv/bin/python benchmarks/bench_int4.py   (writes the 'int4' section)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table, trained, write_section  # noqa: E402

from edgewise.data import load_splits  # noqa: E402
from edgewise.modelio import load_onnx, weight_bytes  # noqa: E402
from edgewise.optimize.fuse import gemm_to_matmul  # noqa: E402
from edgewise.optimize.quantize import quantize_int4_weights  # noqa: E402
from edgewise.profile import evaluate, make_session, measure_latency, run_model  # noqa: E402


def main() -> None:
    rows = []
    for arch, data, width in (("mlp", "digits", 1.0), ("mlp", "digits", 4.0)):
        splits = load_splits(data)
        fp32 = load_onnx(trained(arch, data, 25, width) / "model.onnx")
        rows_for = []
        for block in (32, 64):
            q4 = quantize_int4_weights(fp32, block_size=block)
            # Biases are excluded on both sides: Gemm->MatMul+Add moves them to the Add.
            before, after = weight_bytes(gemm_to_matmul(fp32), ("MatMul",)), weight_bytes(q4, ("MatMulNBits",))
            ref = run_model(make_session(fp32), splits.test.x)
            f = evaluate(run_model(make_session(q4), splits.test.x), splits.test.y, ref)
            a, b = measure_latency([make_session(fp32), make_session(q4)], splits.test.x[0], runs=300)
            rows_for.append([f"{arch} x{width:g} / {data}", block, f"{before:,} -> {after:,}", f"{before / after:.2f}x",
                             f"{evaluate(ref, splits.test.y, ref).accuracy * 100:.2f}%", f"{f.accuracy * 100:.2f}%",
                             f"{f.top1_agreement * 100:.2f}%", f"{a.p50_ms / b.p50_ms:.2f}x"])
        rows += rows_for
    md = (f"## int4 weight-only (MatMulNBits)\n\nMachine: {machine()}. Symmetric blockwise int4, fp32 scales; "
          "bytes are the MatMul/Gemm weight matrices before and the packed int4 weights plus their scales after (biases excluded on both sides). ONNX Runtime's MatMulNBits kernel is slower than its fp32 GEMM at these sizes on this CPU: int4 is a size pass here, and the search only keeps it where latency allows.\n\n"
          + table(["model", "block", "weight bytes", "smaller", "fp32 acc", "int4 acc", "agreement",
                   "speed vs fp32"], rows) + "\n")
    write_section("int4", md)


if __name__ == "__main__":
    main()
