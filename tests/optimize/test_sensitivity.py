import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgewise.modelio import load_onnx
from edgewise.optimize.quantize import Quantizer, StaticConfig
from edgewise.optimize.sensitivity import (
    auto_exclusions,
    layer_sensitivity,
    mixed_precision,
    output_tail,
    quantizable_nodes,
    relative_error,
)
from edgewise.profile import make_session, run_model


def _two_layer_head() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="body"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["logits"], name="head"),
             helper.make_node("Softmax", ["logits"], ["p"], name="softmax")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 3])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_output_adjacent_layers_are_found_through_softmax():
    reasons = auto_exclusions(_two_layer_head(), {}, {})
    assert set(reasons) == {"head"} and "output-adjacent" in reasons["head"]


def test_the_output_tail_is_a_detector_decode_and_the_layers_that_feed_it():
    """A YOLO-style head: box distances (one conv) become pixel boxes by arithmetic on anchors, scores (another
    conv, unnamed as some exporters leave nodes) go through a sigmoid, both are concatenated. The tail is every
    node from the two convs on; the body before them is not in it."""
    rng = np.random.default_rng(0)
    w = lambda n, *s: numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)  # noqa: E731
    inits = [w("wb", 8, 3, 1, 1), w("w1", 4, 8, 1, 1), w("w2", 2, 8, 1, 1), w("anchors", 1, 4, 4, 4)]
    nodes = [helper.make_node("Conv", ["x", "wb"], ["f"], name="body"),
             helper.make_node("Relu", ["f"], ["r"], name="act"),
             helper.make_node("Conv", ["r", "w1"], ["d"], name="box_conv"),
             helper.make_node("Sub", ["anchors", "d"], ["xy"], name="decode_sub"),
             helper.make_node("Mul", ["xy", "anchors"], ["px"], name="stride_mul"),
             helper.make_node("Conv", ["r", "w2"], ["s"], name=""),
             helper.make_node("Sigmoid", ["s"], ["p"], name="score_sigmoid"),
             helper.make_node("Concat", ["px", "p"], ["out"], axis=1, name="cat")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 6, 4, 4])], inits)
    tail = {n.name or n.output[0]: n.op_type for n in output_tail(helper.make_model(g))}
    assert tail == {"cat": "Concat", "score_sigmoid": "Sigmoid", "stride_mul": "Mul", "decode_sub": "Sub",
                    "box_conv": "Conv", "s": "Conv"}
    assert set(auto_exclusions(helper.make_model(g), {}, {})) == {"box_conv"}  # ORT excludes by name


def test_high_range_inputs_are_flagged():
    model = _two_layer_head()
    minmax = {"r": (0.0, 100.0), "x": (-1.0, 1.0)}
    pct = {"r": (0.0, 5.0), "x": (-1.0, 1.0)}
    reasons = auto_exclusions(model, minmax, pct)
    assert "body" not in reasons
    minmax["x"] = (-50.0, 50.0)
    assert "high-range" in auto_exclusions(model, minmax, pct)["body"]


def test_sensitivity_ranks_layers_and_mixed_precision_keeps_the_worst_in_float(trained_cnn_dir, digits):
    # Prepare
    fp32 = load_onnx(trained_cnn_dir / "model.onnx")
    q = Quantizer(fp32, digits.train.x, max_samples=64)
    ref = run_model(make_session(fp32), digits.val.x)
    run = lambda m: run_model(make_session(m), digits.val.x)  # noqa: E731
    nodes = quantizable_nodes(onnx.load(str(q.fp32)))
    # Execute
    sens = layer_sensitivity(q, StaticConfig(), run, ref, nodes)
    calls = []

    def acceptable(model):
        calls.append(sum(n.op_type == "QuantizeLinear" for n in model.graph.node))
        return len(calls) >= 2  # accept the second proposal: 2 layers kept in float

    found = mixed_precision(q, StaticConfig(), sens, acceptable)
    q.close()
    # Assert
    assert set(sens) == set(nodes) and list(sens.values()) == sorted(sens.values(), reverse=True)
    assert all(v >= 0 for v in sens.values())
    assert found is not None and found[1] == tuple(list(sens)[:2])
    assert calls[0] > calls[1], "keeping more layers in float leaves fewer quantize nodes"


def test_relative_error_is_zero_for_identical_outputs():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert relative_error(a, a) == 0.0 and relative_error(a * 2, a) > 0.9
