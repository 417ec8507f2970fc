"""Channel pruning of an ONNX graph (no torch module) and fine-tuning it back to the starting model."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from edgewise.errors import OptimizeError
from edgewise.optimize.graph_finetune import box_focus, finetune_to_outputs
from edgewise.optimize.graph_prune import _Graph, _own_weights, groups, prune_channels


def _net():  # type: ignore[no-untyped-def]
    """Every kind of group: x*sigmoid(x), a depthwise conv with squeeze-and-excitation, global pooling into a
    Linear; and two tensors that must stay whole (a residual Add, a Concat)."""
    import torch
    from torch import nn

    class SE(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(c, 8, 1), nn.Conv2d(8, c, 1)

        def forward(self, x):  # type: ignore[no-untyped-def]
            s = x.mean((2, 3), keepdim=True)
            return x * torch.nn.functional.hardsigmoid(self.b(torch.relu(self.a(s))))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.SiLU())
            self.c2 = nn.Conv2d(16, 16, 1)
            self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16),
                                    nn.Hardswish(), SE(16))
            self.c3 = nn.Conv2d(16, 16, 1)  # its output meets a residual Add: tied
            self.c4 = nn.Conv2d(32, 16, 1)
            self.head = nn.Linear(16, 5)

        def forward(self, x):  # type: ignore[no-untyped-def]
            a = self.c1(x)
            b = self.c3(self.dw(torch.relu(self.c2(a)))) + a
            c = torch.relu(self.c4(torch.cat([a, b], 1)))
            return self.head(nn.functional.adaptive_avg_pool2d(c, 1).flatten(1))

    torch.manual_seed(0)
    net = Net()
    for bn in (net.c1[1], net.dw[1]):  # statistics a trained model would have
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="module")
def net_onnx(tmp_path_factory):
    import torch

    path = tmp_path_factory.mktemp("gp") / "net.onnx"
    torch.onnx.export(_net(), (torch.zeros(1, 3, 12, 12),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
    return onnx.load(path)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]


def test_groups_are_found_and_tied_channels_left_whole(net_onnx):
    m = onnx.ModelProto()
    m.CopyFrom(net_onnx)
    _own_weights(m)
    found = groups(m)
    g = _Graph(m)
    producers = {grp.producer.output[0] for grp in found}
    # c1 feeds the residual Add and the Concat, c3 the Add: neither may shrink
    adds = [n for n in m.graph.node if n.op_type in ("Add", "Concat") and not any(i in g.weights for i in n.input)]
    tied = {i for n in adds for i in n.input}
    convs = {n.output[0]: n for n in m.graph.node if n.op_type == "Conv"}
    assert len(found) == 3  # c2 (with the depthwise conv and the SE), c4 (into the Linear), the SE's squeeze
    assert not producers & {t for t in tied if t in convs}
    kinds = {grp.producer.output[0]: ([c.op_type for c in grp.consumers], len(grp.passes), len(grp.excites))
             for grp in found}
    assert (["Gemm"], 0, 0) in kinds.values(), kinds
    assert any(p == 1 and e == 1 for _, p, e in kinds.values()), "the depthwise conv and the SE scale follow c2"


def test_removing_dead_channels_changes_no_output(net_onnx):
    # Prepare: zero the half of each group's channels that pruning will remove (their filters, biases and
    # the depthwise biases after them), so a correct pruner removes exactly what contributes nothing
    m = onnx.ModelProto()
    m.CopyFrom(net_onnx)
    _own_weights(m)
    g = _Graph(m)
    for grp in groups(m):
        dead = np.arange(grp.channels // 2, grp.channels)
        for node in [grp.producer] + [p for p in grp.passes if p.op_type == "Conv"]:
            for j in (1, 2) if node is grp.producer else (2,):
                w = g.weights[node.input[j]].copy()
                w[dead] = 0.0
                g.weights[node.input[j]] = w
    for init in m.graph.initializer:
        if init.name in g.weights:
            init.CopyFrom(numpy_helper.from_array(g.weights[init.name], init.name))
    x = np.random.default_rng(0).normal(size=(4, 3, 12, 12)).astype(np.float32)
    # Execute
    pruned, step = prune_channels(m, 0.5)
    # Assert: same answers from fewer weights
    np.testing.assert_allclose(_run(pruned, x), _run(m, x), rtol=1e-4, atol=1e-5)
    assert step["channels_after"] < step["channels_before"]
    assert sum(i.ByteSize() for i in pruned.graph.initializer) < 0.8 * sum(i.ByteSize() for i in m.graph.initializer)


def test_kept_channels_round_to_the_multiple_and_the_input_model_is_untouched(net_onnx):
    before = net_onnx.SerializeToString()
    pruned, _ = prune_channels(net_onnx, 0.3, multiple=8)
    assert net_onnx.SerializeToString() == before
    convs = [n for n in pruned.graph.node if n.op_type == "Conv"]
    w = {i.name: i.dims for i in pruned.graph.initializer}
    assert all(w[c.input[1]][0] % 8 == 0 for c in convs)
    x = np.zeros((1, 3, 12, 12), np.float32)
    assert _run(pruned, x).shape == (1, 5)


def test_a_graph_with_weights_in_constant_nodes_is_pruned():
    """PaddleOCR's exporter keeps weights in Constant nodes and writes hard-swish out (x * clip(x+3)/6)."""
    from edgewise.zoo.corpus import rapidocr_model

    model = onnx.load(rapidocr_model("ch_ppocr_mobile_v2.0_cls_infer.onnx"))
    pruned, step = prune_channels(model, 0.5)
    assert step["groups"] >= 3
    sess = ort.InferenceSession(pruned.SerializeToString())
    x = np.random.default_rng(0).random((1, 3, 48, 192), dtype=np.float32)
    assert sess.run(None, {sess.get_inputs()[0].name: x})[0].shape == (1, 2)


def test_nothing_to_prune_and_bad_ratios_are_clear_errors(net_onnx):
    from onnx import TensorProto, helper

    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], [w])
    with pytest.raises(OptimizeError, match="nothing to prune"):
        prune_channels(helper.make_model(g), 0.5)
    with pytest.raises(OptimizeError, match="between 0 and 1"):
        prune_channels(net_onnx, 1.0)


def test_finetuning_brings_a_pruned_graph_back_towards_the_starting_model(net_onnx):
    # Prepare: a pruned copy that answers differently from the starting model
    rng = np.random.default_rng(1)
    x = rng.normal(size=(96, 3, 12, 12)).astype(np.float32)
    teacher = _run(net_onnx, x)
    pruned, _ = prune_channels(net_onnx, 0.5)

    def err(m: onnx.ModelProto) -> float:
        return float(np.mean((_run(m, x) - teacher) ** 2) / np.var(teacher))

    # Execute
    tuned, report = finetune_to_outputs(pruned, x, [teacher], epochs=30, lr=3e-3)
    # Assert: the same graph, closer answers
    assert [n.op_type for n in tuned.graph.node] == [n.op_type for n in pruned.graph.node]
    assert err(tuned) < 0.5 * err(pruned), (err(pruned), err(tuned))
    assert report.batch == 8 and report.epochs == 30 and report.loss_last < report.loss_first


def test_a_yolo_heads_boxes_are_weighted_by_the_teachers_confidence_and_other_outputs_are_not():
    # Prepare: a YOLOv8-style head, 6 images x [4 + 3 classes, 100 anchors], batch axis kept; two sure anchors
    rng = np.random.default_rng(0)
    head = np.concatenate([rng.uniform(5, 60, (6, 1, 4, 100)), rng.uniform(0, 0.02, (6, 1, 3, 100))], axis=2)
    head[:, 0, 5, 7] = 0.9
    head[:, 0, 6, 42] = 0.6
    # Execute
    weights = box_focus([head.astype(np.float32)])
    transposed = box_focus([head.transpose(0, 1, 3, 2).astype(np.float32)])
    # Assert: the box rows follow the top class score, average 1, and class scores keep weight 1
    assert weights is not None and transposed is not None
    w = weights[0]
    assert w.shape == head.shape and np.allclose(w[:, 0, 4:], 1.0)
    assert np.isclose(w[:, 0, :4].mean(), 1.0, rtol=1e-4)
    assert w[0, 0, 0, 7] > 20 * w[0, 0, 0, 3]
    assert w[0, 0, 0, 7] / w[0, 0, 0, 42] == pytest.approx(1.5, rel=1e-4)
    assert np.allclose(transposed[0], w.transpose(0, 1, 3, 2))
    # a classifier's logits, or boxes with scores beside them, are left as they are
    assert box_focus([rng.normal(size=(6, 10)).astype(np.float32)]) is None


def test_finetuning_stops_when_the_time_is_over_and_keeps_what_it_learnt(net_onnx):
    x = np.random.default_rng(2).normal(size=(32, 3, 12, 12)).astype(np.float32)
    pruned, _ = prune_channels(net_onnx, 0.5)
    calls = []

    def over() -> bool:
        calls.append(1)
        return len(calls) >= 3

    tuned, report = finetune_to_outputs(pruned, x, [_run(net_onnx, x)], epochs=50, over=over,
                                        weights=[np.ones((32, 5), np.float32)])
    assert report.stopped_early and report.steps == 3 and report.epochs == 1
    assert _run(tuned, x).shape == (32, 5)


def test_a_graph_exported_at_batch_one_still_trains_in_batches(tmp_path):
    """An export at batch 1 bakes the batch into every Reshape (YOLOv8n's head does this): fine-tuning trains
    a copy whose Reshapes copy the batch, once it answers a batch as it answers each sample; what ships keeps
    the model's own Reshapes."""
    import torch
    from torch import nn

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)

        def forward(self, x):  # type: ignore[no-untyped-def]
            y = self.b(torch.relu(self.a(x)))
            return y.reshape(x.shape[0], 2, 4, -1).softmax(1).reshape(x.shape[0], 8, -1)

    torch.manual_seed(0)
    path = tmp_path / "head.onnx"
    torch.onnx.export(Head().eval(), (torch.zeros(1, 3, 8, 8),), str(path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    model = onnx.load(path)
    x = np.random.default_rng(0).normal(size=(24, 3, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString())
    teacher = np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
    pruned, _ = prune_channels(model, 0.5)
    tuned, report = finetune_to_outputs(pruned, x, [teacher], epochs=2)
    assert report.batch == 8 and report.steps == 6
    shapes = [numpy_helper.to_array(i).tolist() for i in tuned.graph.initializer if i.dims == [3]]
    assert shapes and all(s[0] == 1 for s in shapes), shapes  # the shipped graph keeps its batch-1 Reshapes
    out = ort.InferenceSession(tuned.SerializeToString()).run(None, {"x": x[:1]})[0]
    assert out.shape == (1, 8, 64)


def test_a_weight_a_loop_body_reads_survives_pruning(tmp_path):
    """The corpus's Loop/If graph reads an outer-scope weight from inside its Loop: normalizing the graph's
    weights for pruning must not drop the tensor the body reads."""
    from onnx import TensorProto, helper

    w = numpy_helper.from_array(np.full((1,), 2.0, np.float32), "w")
    conv_w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(16, 3, 1, 1)).astype(np.float32), "cw")
    conv_w2 = numpy_helper.from_array(np.random.default_rng(1).normal(size=(4, 16, 1, 1)).astype(np.float32), "cw2")
    body = helper.make_graph(
        [helper.make_node("Mul", ["v_in", "w_alias"], ["v_out"]), helper.make_node("Identity", ["cond"], ["c_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1, 4, 4, 4])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, 4, 4, 4])])
    nodes = [helper.make_node("Identity", ["w"], ["w_alias"]),
             helper.make_node("Conv", ["x", "cw"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "cw2"], ["c"]),
             helper.make_node("Constant", [], ["n"], value=numpy_helper.from_array(np.array(2, np.int64))),
             helper.make_node("Constant", [], ["t"], value=numpy_helper.from_array(np.array(True))),
             helper.make_node("Loop", ["n", "t", "c"], ["y"], body=body)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], [w, conv_w, conv_w2])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    pruned, step = prune_channels(model, 0.5)
    assert step["groups"] == 1
    x = np.ones((1, 3, 4, 4), np.float32)
    out = ort.InferenceSession(pruned.SerializeToString()).run(None, {"x": x})[0]
    assert out.shape == (1, 4, 4, 4)


def test_without_torch_or_onnx2torch_the_pruned_parent_is_not_offered_and_the_log_says_why(net_onnx, monkeypatch):
    """A device-side install has neither: the search goes on without the parent instead of failing mid-way."""
    import importlib.util

    from edgewise.data import Dataset, split
    from edgewise.optimize.plan import graph_parents
    from edgewise.optimize.search import SearchOptions
    from edgewise.source import Source

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx2torch" else real(name, *a))
    x = np.zeros((20, 3, 12, 12), np.float32)
    splits = split(Dataset("x", x, None, [], {}))
    lines: list[str] = []
    source = Source("net", net_onnx, [], {})
    assert graph_parents(source, splits, SearchOptions(), lines.append, lambda: False) == []
    assert lines and "onnx2torch" in lines[0] and "edgewise[train]" in lines[0]
