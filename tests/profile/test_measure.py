import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgewise.modelio import load_onnx
from edgewise.profile import count_macs, evaluate, make_session, measure_latency, measure_memory
from edgewise.profile.arena import live_tensor_peak


def _conv_chain() -> onnx.ModelProto:
    w1 = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w1")
    w2 = numpy_helper.from_array(np.ones((2, 4, 1, 1), np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], [w1, w2])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_macs_of_a_known_graph():
    # conv1: 64 outputs x 4 channels x 9 taps; conv2: 64 x 2 x 4
    assert count_macs(_conv_chain()) == 64 * 4 * 9 + 64 * 2 * 4


def test_live_tensor_peak():
    # at the Relu, a (256 floats) and b (256 floats) are both alive: 2048 bytes; int8: 512
    assert live_tensor_peak(_conv_chain(), 4) == 2048
    assert live_tensor_peak(_conv_chain(), 1) == 512


def test_fidelity_with_and_without_labels():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    out = np.array([[0.9, 0.1], [0.6, 0.4], [1.0, 0.0]])
    f = evaluate(out, np.array([0, 1, 1]), ref)
    assert f.accuracy == 1 / 3 and abs(f.top1_agreement - 2 / 3) < 1e-9 and 0 < f.cosine < 1
    assert evaluate(out, None, ref).score == f.top1_agreement


def test_latency_and_memory_are_measured(trained_cnn_dir):
    sess = make_session(load_onnx(trained_cnn_dir / "model.onnx"))
    (stats,) = measure_latency([sess], np.zeros((1, 8, 8), np.float32), runs=20, warmup=2)
    assert stats.runs == 20 and 0 < stats.p50_ms <= stats.p90_ms <= stats.p99_ms
    mem = measure_memory(trained_cnn_dir / "model.onnx")
    assert mem["rss_delta_bytes"] > 0


def test_models_are_timed_in_turns_of_blocks_whose_first_runs_are_not_counted():
    from edgewise.profile.measure import interleaved

    order: list[str] = []
    times = interleaved([lambda: order.append("a"), lambda: order.append("b")], runs=20, warmup=3, block=5, skip=2)
    assert [len(t) for t in times] == [20, 20]
    assert order[:6] == ["a"] * 3 + ["b"] * 3  # warm-up first, then turns of five in a row
    assert order[6:16] == ["a"] * 5 + ["b"] * 5 and len(order) == 6 + 7 * 10  # 3 counted a turn: 7 turns for 20
