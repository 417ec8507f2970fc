import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgewise.modelio import load_onnx, pin_input_shape
from edgewise.optimize.fuse import fold_conv_bn, fuse, gemm_to_matmul
from edgewise.profile import make_session, run_model


def _conv_bn_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.random(4).astype(np.float32) + 0.5, "g"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "m"),
             numpy_helper.from_array(rng.random(4).astype(np.float32) + 0.1, "v")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn", epsilon=1e-3)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_conv_bn_folding_is_exact():
    # Prepare
    model = _conv_bn_model()
    x = np.random.default_rng(1).standard_normal((1, 2, 5, 5)).astype(np.float32)
    # Execute
    folded, n = fold_conv_bn(model)
    # Assert
    assert n == 1 and [node.op_type for node in folded.graph.node] == ["Conv"]
    np.testing.assert_allclose(run_model(make_session(folded, reference=True), x),
                               run_model(make_session(model, reference=True), x), rtol=1e-5, atol=1e-5)


def test_real_paddle_model_folds_its_batchnorms(rapidocr_cls):
    model = pin_input_shape(load_onnx(rapidocr_cls), (3, 48, 192))
    fused, info = fuse(model)
    x = np.random.default_rng(0).standard_normal((4, 3, 48, 192)).astype(np.float32)
    assert info["conv_bn_folded"] >= 30 and info["nodes_after"] < info["nodes_before"] / 2
    np.testing.assert_allclose(run_model(make_session(fused), x), run_model(make_session(model), x), atol=1e-5)


def test_gemm_becomes_matmul_plus_add(trained_cnn_dir):
    model = load_onnx(trained_cnn_dir / "model.onnx")
    out = gemm_to_matmul(model)
    ops = [n.op_type for n in out.graph.node]
    assert "Gemm" not in ops and "MatMul" in ops
    x = np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_model(make_session(out), x), run_model(make_session(model), x), atol=1e-5)
