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


def test_old_opset_is_refused_and_newer_upgrades(tmp_path):
    onnx.save(_relu_model(9), tmp_path / "old.onnx")
    with pytest.raises(ModelError, match="opset 9 is not supported"):
        load_onnx(tmp_path / "old.onnx")
    onnx.save(_relu_model(11), tmp_path / "ok.onnx")
    assert default_opset(upgrade_opset(load_onnx(tmp_path / "ok.onnx"), 13)) == 13


def test_pin_open_dims_to_the_data(rapidocr_cls):
    m = load_onnx(rapidocr_cls)
    assert sample_shape(m)[0] == 3 and not isinstance(sample_shape(m)[1], int)
    pinned = pin_input_shape(m, (3, 48, 192))
    assert sample_shape(pinned) == (3, 48, 192)
    with pytest.raises(ModelError, match="expects"):
        pin_input_shape(m, (1, 48, 192))
