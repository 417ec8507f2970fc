"""The MobileNet-class ops in the C backend: HardSwish, Sigmoid, Tanh, LeakyRelu and HardSigmoid (as 256-entry
tables), Mul (elementwise and per channel, as in squeeze-excite), Concat on channels, Softmax, and grouped,
dilated and channel-multiplier convolutions. A small network
using all of them, quantized to int8 QDQ as `optimize` does for an MCU, compiled to C: bit-exact with the integer
reference on the host and on the emulated Cortex-M4, and within one step of ONNX Runtime's execution."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgewise.codegen.compile import compile_model
from edgewise.codegen.emit import render_inputs
from edgewise.codegen.reference import quantize_input, run_reference
from edgewise.optimize.quantize import Quantizer, StaticConfig

from ..harness import build_host, have, run_program


class MobileBits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.se = nn.Conv2d(8, 8, 1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=4)  # grouped and dilated
        self.mult = nn.Conv2d(8, 16, 3, padding=1, groups=8)  # depthwise with a channel multiplier of 2
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = nn.functional.hardswish(self.c1(x))
        b = torch.sigmoid(self.c2(a))
        b = b * nn.functional.hardsigmoid(self.se(nn.functional.adaptive_avg_pool2d(b, 1)))  # squeeze-excite
        c = nn.functional.leaky_relu(self.grouped(torch.cat([a, a * b], 1)), 0.1)  # a * b: same shape
        c = torch.cat([c, self.mult(a)], 1)
        g = nn.functional.adaptive_avg_pool2d(c, 1).flatten(1)
        return torch.softmax(self.fc(torch.tanh(g)), -1)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ops") / "m.onnx"
    torch.onnx.export(MobileBits().eval(), torch.zeros(1, 1, 8, 8), str(path), input_names=["x"],
                      output_names=["y"], opset_version=17, dynamo=False)
    x = np.random.default_rng(0).normal(0, 1, (96, 1, 8, 8)).astype(np.float32)
    q = Quantizer(onnx.load(str(path)), x[:64]).static(StaticConfig(activations="int8", ops=None))
    return q, x[64:]


def test_every_op_lowers_and_the_c_is_bit_exact_and_one_step_from_onnxruntime(quantized, tmp_path):
    from edgewise.profile.runtime import make_session

    model, x = quantized
    c = compile_model(model)
    assert {"lut", "mul", "concat", "softmax"} <= {op.kind for op in c.graph.ops}
    convs = [op.attrs for op in c.graph.ops if op.kind == "conv"]
    assert {(a["groups"], a["dh"], a["depthwise"]) for a in convs} >= {(4, 2, 0), (8, 1, 0), (1, 1, 0)}
    assert {op.attrs["b_inner"] for op in c.graph.ops if op.kind == "mul"} == {1, 8 * 8 * 8}  # per channel; same shape
    assert any("+" in op.node for op in c.graph.ops if op.kind == "lut"), "x * HardSigmoid(x) is one table"
    q = np.stack([quantize_input(c.graph, s) for s in x])
    ref = np.stack([run_reference(c.graph, s).reshape(-1) for s in q]).astype(int)
    on_host = run_program(build_host(c.sources, tmp_path / "ops"), q)
    assert np.array_equal(on_host, ref)
    sess = make_session(model, reference=True)  # DQ -> float op -> Q, as the int8 arithmetic means
    t = c.graph.tensors[c.graph.output]
    ort_q = np.stack([np.clip(np.rint(sess.run(None, {"x": s[None]})[0] / np.float32(t.scale)) + t.zero_point,
                              -128, 127).reshape(-1) for s in x])
    diff = np.abs(ort_q - ref)
    print(f"vs ONNX Runtime: {(diff > 0).mean():.4f} of values one step off")
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.01, (diff.max(), (diff > 0).mean())
    assert (ref.argmax(1) == ort_q.argmax(1)).mean() >= 0.9


@pytest.mark.skipif(not have("qemu-system-arm") and not os.environ.get("CI"), reason="qemu not installed")
def test_the_new_ops_are_bit_exact_on_the_cortex_m4_too(quantized, tmp_path):
    from edgewise.codegen.toolchain import build_arm, run_qemu

    model, x = quantized
    c = compile_model(model)
    q = np.stack([quantize_input(c.graph, s) for s in x[:8]])
    for name, text in c.sources.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "inputs.h").write_text(render_inputs(q))
    lines = run_qemu(build_arm(tmp_path, tmp_path / "ops.elf")).strip().splitlines()
    on_mcu = np.array([[int(v) for v in line.split("|")[0].split()] for line in lines])
    assert np.array_equal(on_mcu, np.stack([run_reference(c.graph, s).reshape(-1) for s in q]))


@pytest.mark.e2e
@pytest.mark.skipif(not have("qemu-system-arm") and not os.environ.get("CI"), reason="qemu not installed")
def test_a_mobilenetv3_small_sized_for_mcu_256k_compiles_fits_and_runs_under_qemu(tmp_path):
    """Width 0.25 at 96x96: depthwise convolutions, HardSwish, squeeze-excite (HardSigmoid and a per-channel
    Mul), residual Adds."""
    from edgewise.codegen.compile import check_budget
    from edgewise.codegen.toolchain import build_arm, run_qemu
    from edgewise.data import load_splits
    from edgewise.targets import load_target
    from edgewise.zoo import TrainConfig, train

    splits = load_splits("digits:96")
    train("mobilenetv3-small", splits, TrainConfig(epochs=1), width=0.25).save(tmp_path / "t")
    model = Quantizer(onnx.load(str(tmp_path / "t" / "model.onnx")), splits.train.x[:32], 32).static(
        StaticConfig(activations="int8", ops=None))
    c = compile_model(model)
    check_budget(c, load_target("mcu-256k"))  # raises if the arena or the weights do not fit
    assert {"conv", "lut", "mul", "add"} <= {op.kind for op in c.graph.ops}
    q = np.stack([quantize_input(c.graph, s) for s in splits.test.x[:2]])
    for name, text in c.sources.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "inputs.h").write_text(render_inputs(q))
    lines = run_qemu(build_arm(tmp_path, tmp_path / "mnv3.elf"), timeout=300).strip().splitlines()
    on_mcu = np.array([[int(v) for v in line.split("|")[0].split()] for line in lines])
    assert np.array_equal(on_mcu, np.stack([run_reference(c.graph, s).reshape(-1) for s in q]))
