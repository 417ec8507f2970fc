import numpy as np
import pytest
from onnx import numpy_helper

from edgewise.errors import OptimizeError
from edgewise.modelio import load_onnx, weight_bytes
from edgewise.optimize.quantize import Quantizer, StaticConfig, StreamingReader, quantize_int4_weights
from edgewise.profile import evaluate, make_session, run_model


@pytest.fixture(scope="module")
def quantizer(trained_cnn_dir, digits):
    q = Quantizer(load_onnx(trained_cnn_dir / "model.onnx"), digits.train.x, max_samples=128)
    yield q
    q.close()


def test_static_int8_is_per_channel_qdq_and_much_smaller(quantizer, trained_cnn_dir, digits):
    # Execute
    model = quantizer.static(StaticConfig(method="percentile", reduce_range=True))
    # Assert
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    scales = [numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("_scale")]
    assert any(s.ndim == 1 and s.size > 1 for s in scales), "per-channel weight scales"
    fp32 = load_onnx(trained_cnn_dir / "model.onnx")
    assert len(fp32.SerializeToString()) / len(model.SerializeToString()) > 2.5
    ref = run_model(make_session(fp32), digits.val.x)
    fid = evaluate(run_model(make_session(model), digits.val.x), digits.val.y, ref)
    assert fid.top1_agreement > 0.97


def test_every_calibration_method_runs(quantizer, digits):
    for method in ("minmax", "percentile", "entropy"):
        model = quantizer.static(StaticConfig(method=method))
        assert run_model(make_session(model), digits.val.x[:8]).shape == (8, 10)
    assert len(quantizer.ranges("minmax")) > 5
    with pytest.raises(OptimizeError, match="unknown calibration"):
        quantizer.static(StaticConfig(method="magic"))


def test_calibration_streams_a_bounded_number_of_equal_batches():
    x = np.zeros((1000, 3), np.float32)
    reader = StreamingReader("input", x, batch=16, max_samples=100)
    sizes = []
    while (batch := reader.get_next()) is not None:
        sizes.append(len(batch["input"]))
    # ORT's histogram calibrators stack what they see: every batch the same size, the remainder dropped
    assert set(sizes) == {16} and sum(sizes) == 96 and len(reader) == 6
    reader.set_range(2, 4)  # quantize_static's strided calibration: one slice of batches per collect
    assert sum(len(b["input"]) for b in iter(reader.get_next, None)) == 32


def test_dynamic_int8_loads_on_onnxruntime(quantizer, digits):
    model = quantizer.dynamic(("MatMul", "Gemm"))
    assert any(n.op_type in ("DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul")
               for n in model.graph.node) or weight_bytes(model) > 0
    run_model(make_session(model), digits.val.x[:4])


def test_int4_weight_only_is_over_6x_smaller_on_matmul_weights(tmp_path, digits):
    from edgewise.zoo import TrainConfig, train

    tm = train("mlp", digits, TrainConfig(epochs=2))
    tm.save(tmp_path)
    fp32 = load_onnx(tmp_path / "model.onnx")
    q4 = quantize_int4_weights(fp32)
    from edgewise.optimize.fuse import gemm_to_matmul

    before = weight_bytes(gemm_to_matmul(fp32), ("MatMul",))  # weights only, biases excluded
    after = weight_bytes(q4, ("MatMulNBits",))
    assert before / after >= 6.0
    ref = run_model(make_session(fp32), digits.val.x)
    assert evaluate(run_model(make_session(q4), digits.val.x), digits.val.y, ref).top1_agreement > 0.95


def test_int4_refuses_a_model_without_matmul():
    from tests.optimize.test_fuse import _conv_bn_model

    with pytest.raises(OptimizeError, match="no MatMul/Gemm"):
        quantize_int4_weights(_conv_bn_model())


@pytest.mark.parametrize("held_in", ["initializer", "Constant"])
def test_fp16_keeps_float32_where_a_constant_is_beyond_float16s_range(held_in):
    """PaddleOCR's text detector holds BatchNorm variances near 1e7: clamped to float16's range, every output
    pixel was wrong (0% IoU agreement); those nodes stay float32 and the rest goes float16. Its variances are
    Constant nodes, and the converter put a float16 Cast and back between the Constant and the BatchNorm,
    both kept float32: the variance became inf on the way (4% agreement on text, on the CPU and on CUDA)."""
    import onnx
    from onnx import helper, numpy_helper

    from edgewise.optimize.quantize import fp16_unsafe_nodes, to_fp16
    from edgewise.profile import make_session

    c = 2
    init = [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in
            (("scale", [1.0, 2.0]), ("bias", [0.5, -0.5]), ("mean", [0.1, -0.2]), ("var", [1.0e7, 4.0e7]),
             ("w", np.ones((c, c, 1, 1)) * 0.5))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"]),
             helper.make_node("BatchNormalization", ["h", "scale", "bias", "mean", "var"], ["y"])]
    if held_in == "Constant":  # as PaddleOCR's graph holds it: a Constant node, not an initializer
        nodes.insert(0, helper.make_node("Constant", [], ["var"], value=init.pop(3)))
    g = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, c, 4, 4])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, c, 4, 4])], init)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert len(fp16_unsafe_nodes(m)) == 1 + (held_in == "Constant")  # the BatchNorm (and its Constant)
    x = np.random.default_rng(0).normal(0, 3000, (1, c, 4, 4)).astype(np.float32)
    want = make_session(m).run(None, {"x": x})[0]
    half = to_fp16(m)
    got = make_session(half).run(None, {"x": x})[0]
    assert np.abs(got - want).max() <= 1e-2 * np.abs(want).max(), (got, want)
    types = {t.name: t.data_type for t in half.graph.initializer}
    assert types["w"] == onnx.TensorProto.FLOAT16 and types.get("var", onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT
    onnx.checker.check_model(half)  # its Casts in order (the converter appends them at the end)


def test_entropy_thresholds_match_ort_and_a_grown_histogram_stays_cheap():
    """Our numpy search returns ORT's own entropy thresholds; on a histogram that grew to 12,000 bins (ORT
    widens it whenever a later batch reaches further; YOLOv8n's reach 50,000) it tries a geometric subset of
    the thresholds, at full resolution, and lands within 0.3% of the search that tries every one."""
    from onnxruntime.quantization import calibrate

    from edgewise.optimize import quantize
    from edgewise.optimize.quantize import _WideHistograms, entropy_threshold

    ort_search = super(_WideHistograms, _WideHistograms).get_entropy_threshold
    rng = np.random.default_rng(0)
    for bins in (128, 130, 600, 2048):
        data = np.concatenate([rng.normal(0, 1, 5000), rng.normal(0, 8, 50)]).astype(np.float32)
        top = np.abs(data).max()
        hist, edges = np.histogram(data, bins, range=(-top, top))
        hist[:7] = 0  # empty bins exercise the smoothing
        h = (hist, edges, data.min(), data.max(), top)
        assert tuple(map(float, entropy_threshold(h, 128))) == tuple(map(float, ort_search(None, h, 128))), bins
    assert calibrate.HistogramCollector is _WideHistograms
    wide = np.histogram(np.concatenate([rng.normal(0, 1, 20000), rng.normal(0, 20, 20)]), 12_000, range=(-80, 80))
    h = (wide[0], wide[1], -80.0, 80.0, 80.0)
    low, high = map(float, entropy_threshold(h, 128))
    assert quantize.MAX_ENTROPY_CANDIDATES < 6_000 - 64 and -80 < low < -1 and 1 < high < 80
    limit, quantize.MAX_ENTROPY_CANDIDATES = quantize.MAX_ENTROPY_CANDIDATES, 10**9
    try:
        every = float(entropy_threshold(h, 128)[1])  # all 5,937 thresholds
    finally:
        quantize.MAX_ENTROPY_CANDIDATES = limit
    assert abs(high - every) <= 0.003 * every, (high, every)
