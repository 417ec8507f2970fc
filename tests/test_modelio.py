import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgewise.errors import ModelError
from edgewise.modelio import default_opset, load_onnx, pin_input_shape, sample_shape, upgrade_opset


def _relu_model(opset: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_missing_corrupt_and_non_onnx_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_onnx(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelError, match="not an ONNX model|invalid ONNX"):
        load_onnx(tmp_path / "junk.onnx")
    (tmp_path / "readme.onnx").write_text("hello, I am a text file")
    with pytest.raises(ModelError, match="not an ONNX model|invalid ONNX"):
        load_onnx(tmp_path / "readme.onnx")


def test_truncated_model_is_refused(trained_cnn_dir, tmp_path):
    data = (trained_cnn_dir / "model.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError):
        load_onnx(tmp_path / "cut.onnx")


def test_opsets_7_to_10_are_lifted_on_load_and_older_refused(tmp_path):
    onnx.save(_relu_model(9), tmp_path / "old.onnx")
    assert default_opset(load_onnx(tmp_path / "old.onnx")) == 13
    onnx.save(_relu_model(6), tmp_path / "ancient.onnx")
    with pytest.raises(ModelError, match="opset 6 is not supported"):
        load_onnx(tmp_path / "ancient.onnx")
    onnx.save(_relu_model(11), tmp_path / "ok.onnx")
    assert default_opset(upgrade_opset(load_onnx(tmp_path / "ok.onnx"), 13)) == 13


def test_an_operator_nothing_runs_is_named_with_its_node(tmp_path):
    m = _relu_model(17)
    m.graph.node[0].op_type, m.graph.node[0].domain, m.graph.node[0].name = "Swoosh", "com.acme", "blocks.3/act"
    m.opset_import.append(helper.make_opsetid("com.acme", 1))
    onnx.save(m, tmp_path / "custom.onnx")
    with pytest.raises(ModelError, match=r"operator Swoosh \(domain com.acme\) in node 'blocks.3/act'"):
        load_onnx(tmp_path / "custom.onnx")


def test_external_data_models_load_with_their_weights(trained_cnn_dir, tmp_path):
    m = onnx.load(str(trained_cnn_dir / "model.onnx"))
    onnx.save(m, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    loaded = load_onnx(tmp_path / "ext.onnx")
    assert (tmp_path / "ext.onnx.data").stat().st_size > 1000
    assert all(not t.external_data for t in loaded.graph.initializer), "weights are read into memory"
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(ModelError, match="external data"):
        load_onnx(tmp_path / "ext.onnx")


def test_pin_open_dims_to_the_data(rapidocr_cls):
    m = load_onnx(rapidocr_cls)
    assert sample_shape(m)[0] == 3 and not isinstance(sample_shape(m)[1], int)
    pinned = pin_input_shape(m, (3, 48, 192))
    assert sample_shape(pinned) == (3, 48, 192)
    with pytest.raises(ModelError, match="expects"):
        pin_input_shape(m, (1, 48, 192))
