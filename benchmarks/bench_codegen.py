"""Tier-1 C backend: instructions per MAC (valgrind, noise-free), arena vs its lower bound and vs
TFLite Micro's greedy order, and Cortex-M4 flash/RAM beside the ONNX file and ONNX Runtime's memory.

Run: .venv/bin/python benchmarks/bench_codegen.py   (writes the 'codegen' section of benchmarks/RESULTS.md)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, machine, table, trained, write_section  # noqa: E402

from edgewise.codegen.compile import compile_model  # noqa: E402
from edgewise.codegen.reference import quantize_input  # noqa: E402
from edgewise.codegen.emit import render_inputs  # noqa: E402
from edgewise.codegen.toolchain import arm_sizes, build_host, callgrind_instructions, count_instructions  # noqa: E402
from edgewise.data import load_splits  # noqa: E402
from edgewise.optimize.pipeline import optimize  # noqa: E402
from edgewise.optimize.search import SearchOptions  # noqa: E402
from edgewise.profile import measure_memory  # noqa: E402
from edgewise.targets import load_target  # noqa: E402


def mcu_bundle(label: str, arch: str, data: str, epochs: int) -> Path:
    out = WORK / f"opt-{label}-mcu"
    if not (out / "bundle" / "model.onnx").is_file():
        optimize(trained(arch, data, epochs), data, load_target("mcu-256k"), out, SearchOptions(),
                 log=lambda m: print("   ", m, flush=True))
    return out / "bundle"


def plain_int8(arch: str, data: str, epochs: int) -> Path:
    """The full-width model quantized alone (no distillation): the MAC-heavier case."""
    from edgewise.optimize.compact import compact
    from edgewise.optimize.quantize import Quantizer, StaticConfig

    out = WORK / f"plain-int8-{arch}-{data}.onnx"
    if not out.is_file():
        src = onnx.load(str(trained(arch, data, epochs) / "model.onnx"))
        q = Quantizer(src, load_splits(data).train.x, 256)
        onnx.save(compact(q.static(StaticConfig(activations="int8", ops=None))), str(out))
        q.close()
    return out


def main() -> None:
    rows, mem_rows = [], []
    cases = [("digits-cnn (chosen for mcu-256k)", mcu_bundle("digits-cnn", "cnn", "digits", 25) / "model.onnx", "digits"),
             ("basicmotions-cnn1d (chosen)", mcu_bundle("basicmotions-cnn1d", "cnn1d", "basicmotions", 40) / "model.onnx",
              "basicmotions"),
             ("digits-cnn full width, plain int8", plain_int8("cnn", "digits", 25), "digits"),
             ("basicmotions-cnn1d full width, plain int8", plain_int8("cnn1d", "basicmotions", 40), "basicmotions")]
    for label, model_path, data in cases:
        model = onnx.load(str(model_path))
        c = compile_model(model)
        x = load_splits(data).test.x[:10]
        q = np.stack([quantize_input(c.graph, s) for s in x])
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            for name, text in c.sources.items():
                (d / name).write_text(text)
            instr = callgrind_instructions(build_host(d, d / "model"), q.tobytes(), d) / len(q)
            arm = arm_sizes(d, d)
            (d / "inputs.h").write_text(render_inputs(q[:3]))
            m4 = float(np.mean([m for _, m in count_instructions(d, d)]))
        ort = measure_memory(model_path)["rss_delta_bytes"]
        p = c.plan
        rows.append([label, f"{c.graph.macs:,}", f"{instr:,.0f}", f"{instr / c.graph.macs:.2f}",
                     f"{m4:,.0f}", f"{m4 / c.graph.macs:.2f}",
                     f"{p.arena_bytes:,}", f"{p.lower_bound_bytes:,}", f"{p.arena_bytes / p.lower_bound_bytes:.2f}x",
                     f"{p.tried['largest-first']:,}", p.strategy])
        mem_rows.append([label, f"{arm['text']:,}", f"{arm['data']:,}", f"{arm['bss']:,}",
                         f"{c.graph.flash_bytes():,}", f"{model_path.stat().st_size:,}",
                         f"{ort / 1024:,.0f} KB"])
    md = (f"## Tier 1: generated C\n\nMachine: {machine()}. Instructions from `valgrind --tool=callgrind` inside "
          "`ew_model_invoke` only (host gcc -O2, x86-64), averaged over 10 test inputs: a count, not a time. "
          "Cortex-M4: the same call on qemu's mps2-an386 (`-icount shift=0`, the board's 25 MHz counter read "
          "around it, exact to 40 instructions; arm-none-eabi-gcc -O2, hard float, the SMLAD kernels), 3 inputs. "
          "Arena: the planner's best of 5 placement orders; lower bound: the largest set of simultaneously live "
          "tensors (plus the running conv's scratch column); TFLM order: greedy largest-first, as TFLite Micro plans.\n\n"
          + table(["model", "MACs", "x86 instructions / inference", "x86 / MAC", "Cortex-M4 instructions",
                   "M4 / MAC", "arena B", "lower bound B",
                   "arena / bound", "TFLM-order arena B", "chosen order"], rows)
          + "\n\nFlash and RAM on Cortex-M4 (arm-none-eabi-gcc -O2, hard float, model.c + ew_kernels.c only, no libc), beside "
          "the int8 ONNX file and ONNX Runtime's peak RSS growth for the same model on this machine:\n\n"
          + table(["model", ".text B", ".data B", ".bss B (arena)", "weights+params B", "ONNX file B",
                   "ONNX Runtime RSS"], mem_rows) + "\n")
    write_section("codegen", md)


if __name__ == "__main__":
    main()
