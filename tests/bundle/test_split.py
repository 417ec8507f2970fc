import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgewise.bundle import read_bundle, verify_bundle
from edgewise.bundle.split import split_bundle
from edgewise.errors import ModelError
from edgewise.modelio import embedding_tensor, expose, split_at

from ..harness import make_bundle


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})


def test_tail_of_the_embedding_reproduces_the_whole_model(tmp_path):
    # Prepare
    bundle = make_bundle(tmp_path, "cnn", 1, "digits")
    whole = onnx.load(str(bundle / "model.onnx"))
    x = np.random.default_rng(0).uniform(0, 1, (5, 1, 8, 8)).astype(np.float32)
    # Execute
    manifest = split_bundle(bundle, tmp_path / "tail")
    logits, features = _run(expose(whole, embedding_tensor(whole)), x)
    (tail_logits,) = _run(onnx.load(str(tmp_path / "tail" / "model.onnx")), features)
    # Assert: head+tail == whole, the tail bundle is verifiable and says where it came from
    np.testing.assert_allclose(tail_logits, logits, rtol=1e-5, atol=1e-5)
    assert verify_bundle(tmp_path / "tail").name == "digits-tail" == manifest.name
    assert read_bundle(tmp_path / "tail").artifacts["split"]["from"] == "digits"
    assert manifest.inputs[0]["shape"][1:] == list(features.shape[1:])


def _residual() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Add", ["r", "x"], ["y"])]
    g = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_split_points_that_do_not_cut_the_graph_are_refused():
    m = _residual()
    with pytest.raises(ModelError, match="does not cut the graph"):
        split_at(m, "r")
    with pytest.raises(ModelError, match="no tensor named"):
        split_at(m, "nope")
    with pytest.raises(ModelError, match="model's input"):
        split_at(m, "x")
