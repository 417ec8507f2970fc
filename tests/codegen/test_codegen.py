"""The C backend: lowering, planning, host build bit-exactness, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgewise.bundle import verify_bundle
from edgewise.codegen.compile import compile_bundle, compile_model
from edgewise.codegen.lower import lower
from edgewise.codegen.planner import _first_fit, buffers, lower_bound, plan
from edgewise.codegen.quant import quantize_multiplier, requantize
from edgewise.codegen.reference import quantize_input, run_reference
from edgewise.data import load_splits
from edgewise.errors import CodegenError
from edgewise.profile import make_session, run_model
from edgewise.targets import load_target

from ..harness import build_host, run_program


def _quantized_inputs(model: onnx.ModelProto, data: str) -> tuple[np.ndarray, np.ndarray, object]:
    graph = lower(model)
    test = load_splits(data).test
    return np.stack([quantize_input(graph, x) for x in test.x]), test.x, graph


@pytest.mark.parametrize("fixture, data", [("digits_bundle", "digits"), ("motion_bundle", "basicmotions"),
                                           ("dscnn_bundle", "digits")])
def test_reference_matches_onnxruntime_within_one_step(request, fixture, data):
    """ORT's reference execution of the QDQ graph vs our integer arithmetic, on the whole test split.

    Tolerance: 1 LSB on at most 1% of output values. ORT computes each op in float32 (dequantize,
    float accumulate, divide by the output scale, round half to even); we accumulate exactly in int32 and
    requantize with a Q31 multiplier rounding half up. Values that land within float32 error of a .5
    boundary can round differently; one step at one layer can move a later layer's output by one step.
    Measured on these models: 0 to 0.3% of values differ, never by more than 1.
    """
    model = onnx.load(str(request.getfixturevalue(fixture) / "model.onnx"))
    q, x, graph = _quantized_inputs(model, data)
    ort_out = run_model(make_session(model, reference=True), x)
    t = graph.tensors[graph.output]
    ort_q = np.rint(ort_out / np.float32(t.scale)) + t.zero_point
    ours = np.stack([run_reference(graph, s) for s in q]).astype(np.int64)
    diff = np.abs(ours - ort_q)
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.01, (diff.max(), (diff > 0).mean())
    assert (ours.argmax(1) == ort_out.argmax(1)).mean() >= 0.99


@pytest.mark.parametrize("fixture, data", [("digits_bundle", "digits"), ("motion_bundle", "basicmotions"),
                                           ("dscnn_bundle", "digits")])
def test_generated_c_is_bit_exact_and_keeps_the_reported_accuracy(request, tmp_path, fixture, data):
    # Prepare
    bundle = request.getfixturevalue(fixture)
    model = onnx.load(str(bundle / "model.onnx"))
    compiled = compile_model(model)
    q, _, graph = _quantized_inputs(model, data)
    # Execute
    out = run_program(build_host(compiled.sources, tmp_path), q)
    # Assert
    ref = np.stack([run_reference(graph, s) for s in q])
    assert np.array_equal(out, ref)
    y = load_splits(data).test.y
    accuracy = float((out.argmax(1) == y).mean())
    # the reported figure comes from ONNX Runtime's QDQ reference (float between the int8 steps); integer
    # arithmetic can break a near-tie the other way: at most one test sample apart
    assert accuracy == pytest.approx(verify_bundle(bundle).metrics["accuracy"], abs=1 / len(y) + 1e-9)


def test_arena_fits_the_mcu_with_room_and_is_near_the_lower_bound(digits_bundle, motion_bundle):
    for bundle in (digits_bundle, motion_bundle):
        p = compile_model(onnx.load(str(bundle / "model.onnx"))).plan
        assert p.arena_bytes <= 64 * 1024
        assert p.arena_bytes <= 1.1 * p.lower_bound_bytes
        assert p.arena_bytes <= p.tried["largest-first"], "never worse than TFLM's greedy-by-size order"


def test_planned_buffers_never_overlap_while_alive(dscnn_bundle):
    graph = lower(onnx.load(str(dscnn_bundle / "model.onnx")))
    p = plan(graph)
    bufs, _ = buffers(graph)
    for a in bufs:
        for b in bufs:
            if a is not b and a.overlaps_in_time(b):
                oa, ob = p.offsets[a.name], p.offsets[b.name]
                assert oa + a.size <= ob or ob + b.size <= oa, (a, b)
    assert lower_bound(bufs) <= p.arena_bytes
    assert _first_fit([])[1] == 0


def test_multiplier_encoding_is_accurate():
    for real in (0.5, 1e-4, 0.0123456, 0.999999, 3.5e-9):
        m, s = quantize_multiplier(real)
        assert (1 << 30) <= m < (1 << 31) and abs(m * 2.0**-s - real) <= real * 2**-30
    assert requantize(np.array([3, -3, 5, 1, 7]), 1 << 30, 31).tolist() == [2, -2, 2, 0, 4]  # x/2, half to even


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 16, 10)

    def forward(self, x):  # type: ignore[no-untyped-def]
        a = torch.relu(self.c1(x))
        b = torch.clamp(self.c3(torch.relu(self.c2(a))), 0.0, 6.0)
        return self.fc(torch.flatten(self.pool(torch.relu(a + b)), 1))


def _int8(module: nn.Module, shape: tuple[int, ...], calib: np.ndarray, tmp: Path) -> onnx.ModelProto:
    from edgewise.optimize.quantize import Quantizer, StaticConfig
    from edgewise.zoo.export import export_onnx

    q = Quantizer(export_onnx(module, shape, tmp / "fp32.onnx"), calib, 64)
    model = q.static(StaticConfig(activations="int8", ops=None))
    q.close()
    return model


def test_residual_add_clip_and_avgpool(tmp_path):
    """Ops the zoo's tier-1 models do not use but tier-1 models need: Add, Clip (ReLU6), AveragePool."""
    torch.manual_seed(0)
    x = load_splits("digits").test.x
    model = _int8(_Residual().eval(), (1, 8, 8), x[:64], tmp_path)
    compiled = compile_model(model)
    kinds = {op.kind for op in compiled.graph.ops}
    assert {"add", "avgpool", "conv", "fc"} <= kinds
    q = np.stack([quantize_input(compiled.graph, s) for s in x])
    ref = np.stack([run_reference(compiled.graph, s) for s in q]).astype(np.int64)
    # Tolerance 1 step. A 2x2 average pool whose output keeps the input's scale lands exactly on .5 for a
    # quarter of its windows; ORT computes it in float32, where such a tie comes out a hair above or below
    # .5 depending on summation error, so it rounds either way (measured: 2.6% of pooled values differ,
    # by exactly 1). The classifier after it turns those into at most 1 step on ~20% of logits.
    t = compiled.graph.tensors[compiled.graph.output]
    ort_out = run_model(make_session(model, reference=True), x)
    ort_q = np.rint(ort_out / np.float32(t.scale)) + t.zero_point
    assert np.abs(ref - ort_q).max() <= 1 and (ref != ort_q).mean() < 0.3
    assert (ref.argmax(1) == ort_out.argmax(1)).mean() >= 0.97
    assert np.array_equal(run_program(build_host(compiled.sources, tmp_path / "c"), q), ref)


def test_unsupported_op_names_op_and_node(tmp_path):
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ELU(), nn.Flatten(), nn.Linear(4 * 36, 3)).eval()
    model = _int8(net, (1, 8, 8), load_splits("digits").test.x[:32], tmp_path)
    with pytest.raises(CodegenError, match=r"unsupported op Elu at node \S+"):
        lower(model)


def test_fp32_and_uint8_models_are_refused_with_the_pass_to_run(tmp_path, digits_bundle):
    from edgewise.optimize.quantize import Quantizer, StaticConfig
    from edgewise.zoo import build
    from edgewise.zoo.export import export_onnx

    fp32 = export_onnx(build("cnn", (1, 8, 8), 10).eval(), (1, 8, 8), tmp_path / "m.onnx")
    with pytest.raises(CodegenError, match="not int8.*optimize"):
        lower(fp32)
    q = Quantizer(fp32, load_splits("digits").test.x[:16], 16)
    u8 = q.static(StaticConfig())  # uint8 activations: the ONNX Runtime CPU fast path, not an MCU's
    q.close()
    with pytest.raises(CodegenError, match="uint8, not int8"):
        lower(u8)


def test_dynamic_shapes_are_refused(digits_bundle):
    model = onnx.load(str(digits_bundle / "model.onnx"))
    for d in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.Clear()
        d.dim_param = "side"
    with pytest.raises(CodegenError, match="not static"):
        lower(model)


def test_compile_bundle_records_c_and_refuses_over_budget(digits_bundle, tmp_path):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(digits_bundle, bundle)
    compiled = compile_bundle(bundle, tmp_path / "c", load_target("mcu-256k"))
    man = verify_bundle(bundle)
    assert {f"c/{n}" for n in compiled.sources} <= set(man.files)
    assert man.artifacts["c"]["arena_bytes"] == compiled.plan.arena_bytes
    # optimize's budget check used the same compiler figures
    assert man.metrics["ram_bytes"] == compiled.plan.arena_bytes
    assert man.metrics["flash_bytes"] == compiled.graph.flash_bytes()
    assert json.loads((tmp_path / "c" / "memory.json").read_text())["constants_bytes"] > 0
    tiny = tmp_path / "tiny.toml"
    tiny.write_text('name = "tiny"\nram_bytes = 100\nflash_bytes = 1000000\nlatency_budget_ms = 10\n'
                    'precisions = ["int8"]\ntier = "endpoint"\nmacs_per_second = 1e6\n')
    with pytest.raises(CodegenError, match="RAM for the arena, tiny has"):
        compile_bundle(bundle, tmp_path / "c2", load_target(str(tiny)))
    assert not (tmp_path / "c2").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CodegenError, match="cannot write"):
        compile_bundle(bundle, blocker / "c", load_target("mcu-256k"))
