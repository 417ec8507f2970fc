"""Feeding models of any input signature from datasets: named inputs, dtypes, fixed batch sizes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgewise.data import Dataset
from edgewise.errors import DataError
from edgewise.profile import make_session, run_outputs


def _two_inputs() -> onnx.ModelProto:
    """y = x * mask (as float) + step; a second output echoes the mask."""
    nodes = [helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "maskf"], ["xm"]),
             helper.make_node("Cast", ["step"], ["stepf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["xm", "stepf"], ["y"]),
             helper.make_node("Identity", ["mask"], ["mask_out"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                                       helper.make_tensor_value_info("mask", TensorProto.BOOL, [1, 4]),
                                       helper.make_tensor_value_info("step", TensorProto.INT64, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
                           helper.make_tensor_value_info("mask_out", TensorProto.BOOL, [1, 4])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_named_samples_feed_every_input_in_its_dtype_and_every_output_comes_back():
    n = 5
    named = {"x": np.ones((n, 1, 4)), "mask": np.tile([1, 0, 1, 0], (n, 1, 1)), "step": np.arange(n)}
    ds = Dataset("d", np.zeros((n, 1), np.float32), None, [], {}, named)
    y, mask = run_outputs(make_session(_two_inputs()), ds)
    assert y.shape == (n, 1, 4) and mask.shape == (n, 1, 4) and mask.dtype == np.bool_
    np.testing.assert_allclose(y[3, 0], [4, 3, 4, 3])


def test_missing_wrong_shaped_and_fractional_inputs_are_named():
    sess = make_session(_two_inputs())
    base = {"x": np.ones((2, 1, 4)), "mask": np.ones((2, 1, 4), bool), "step": np.zeros(2)}
    cases = [({k: v for k, v in base.items() if k != "step"}, "missing step"),
             ({**base, "x": np.ones((2, 1, 5))}, "input 'x'"),
             ({**base, "step": np.array([0.5, 1.0])}, "'step' takes int64")]
    for named, message in cases:
        with pytest.raises(DataError, match=message):
            run_outputs(sess, Dataset("d", np.zeros((2, 1), np.float32), None, [], {}, named))


def test_a_fixed_batch_model_runs_padded_batches():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    model = helper.make_model(helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    data = np.arange(15, dtype=np.float32).reshape(5, 3)
    out = run_outputs(make_session(model), data)[0]
    np.testing.assert_array_equal(out, -data)  # 5 samples in batches of exactly 2: the last one padded
