"""Fine-tune an ONNX model to reproduce another model's outputs (distillation without a torch module).

The graph is turned into torch modules (onnx2torch) only to train: the weights of its convolutions, fully
connected layers and batch norms are fitted, then written back into the same ONNX graph, so the model that
ships has exactly the structure that was pruned and checked. Any task: the loss compares every output
element with the teacher's, each divided by how much that element varies across the training samples, so
boxes in pixels and class scores near zero count alike, and an element the input does not change cannot
dominate. A YOLO-style detector's box coordinates are weighted by how sure the teacher is that an object is
at that anchor (`box_focus`): of thousands of anchors only the few that become boxes decide its mAP.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from edgewise.errors import OptimizeError

Clock = Callable[[], bool]  # True once the time for building is over


@dataclass
class FinetuneReport:
    epochs: int
    steps: int
    batch: int
    seconds: float
    loss_first: float
    loss_last: float
    stopped_early: bool = False

    def as_dict(self) -> dict:
        return {"epochs": self.epochs, "steps": self.steps, "batch": self.batch, "seconds": round(self.seconds, 1),
                "loss_first_epoch": round(self.loss_first, 5), "loss_last_epoch": round(self.loss_last, 5),
                "stopped_by_time_budget": self.stopped_early}


def _torch_module(model: onnx.ModelProto):  # type: ignore[no-untyped-def]
    """onnx2torch's module for `model`, its nodes named n0, n1, ... so each maps back to its node."""
    from edgewise.zoo.corpus import import_torchvision

    import_torchvision()  # onnx2torch imports torchvision, which needs help beside a CPU-only torch
    try:
        from onnx2torch import convert
    except ImportError as e:
        raise OptimizeError("fine-tuning an ONNX graph needs onnx2torch (pip install 'edgewise[train]')") from e
    named = onnx.ModelProto()
    named.CopyFrom(model)
    for k, n in enumerate(named.graph.node):
        n.name = f"n{k}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return convert(named)
    except Exception as e:  # onnx2torch raises NotImplementedError, KeyError, ... for what it cannot map
        raise OptimizeError(f"this graph cannot be turned into torch modules to fine-tune it: {e}") from e


def _trainable(module, model: onnx.ModelProto) -> list[tuple[int, object]]:  # type: ignore[no-untyped-def]
    """(node index, torch module) for nodes whose weights can be trained and written back."""
    import torch

    out = []
    for k, n in enumerate(model.graph.node):
        try:
            sub = module.get_submodule(f"n{k}")
        except AttributeError:
            continue
        trainable = {
            "Conv": isinstance(sub, torch.nn.modules.conv._ConvNd),
            "Gemm": isinstance(sub, torch.nn.Linear) and all(a.f == 1.0 for a in n.attribute
                                                               if a.name in ("alpha", "beta")),
            "BatchNormalization": isinstance(sub, torch.nn.modules.batchnorm._BatchNorm),
        }
        if trainable.get(n.op_type, False):
            out.append((k, sub))
    return out


def _write_back(model: onnx.ModelProto, trained: list[tuple[int, object]]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    for k, sub in trained:
        n = out.graph.node[k]
        if n.op_type == "BatchNormalization":
            values = [sub.weight, sub.bias]  # type: ignore[attr-defined]
        else:
            w = sub.weight.detach().numpy()  # type: ignore[attr-defined]
            if n.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in n.attribute):
                w = w.T
            values = [w, sub.bias]  # type: ignore[attr-defined]
        for j, v in enumerate(values, start=1):
            if v is None or len(n.input) <= j or n.input[j] not in inits:
                continue
            arr = v if isinstance(v, np.ndarray) else v.detach().numpy()
            init = inits[n.input[j]]
            init.CopyFrom(numpy_helper.from_array(arr.astype(numpy_helper.to_array(init).dtype)
                                                  .reshape(tuple(init.dims)), init.name))
    return out


def box_focus(targets: list[np.ndarray]) -> list[np.ndarray | None] | None:
    """Loss weights for a YOLO-style head (sample-major teacher outputs): each anchor's four box coordinates
    count by the teacher's top class score there, scaled so they weigh as much in all as they did unweighted;
    class scores keep weight 1. None when the outputs are not such a head."""
    from edgewise.profile.detection import find_layout, squeeze_lead

    if not targets or len(targets[0]) == 0:
        return None
    layout = find_layout([t[0] for t in targets])
    if layout is None or layout.kind != "yolo":
        return None
    t = targets[layout.boxes]
    m = t.reshape(len(t), *squeeze_lead(t[0], 2).shape)
    m = m if layout.anchors_last else m.transpose(0, 2, 1)  # (N, 4+C, A)
    conf = m[:, 4:].max(1).astype(np.float32)  # (N, A)
    w = np.ones(m.shape, np.float32)
    w[:, :4] = (conf / max(float(conf.mean()), 1e-12))[:, None, :]
    w = w if layout.anchors_last else w.transpose(0, 2, 1)
    weights: list[np.ndarray | None] = [None] * len(targets)
    weights[layout.boxes] = np.ascontiguousarray(w).reshape(t.shape)
    return weights


BATCH = 8


def _run(module, xb):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():  # onnx2torch's Slice warns about a torch indexing deprecation
        warnings.simplefilter("ignore")
        out = module(xb)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _takes_batches(module, xs) -> bool:  # type: ignore[no-untyped-def]
    import torch

    n = min(BATCH, len(xs))
    try:
        with torch.no_grad():
            return n > 1 and all(o.shape[0] == n for o in _run(module, xs[:n]))
    except Exception:  # noqa: BLE001 - onnx2torch modules raise whatever torch raises on a wrong shape
        return False


def _batch_free(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy whose Reshapes copy the batch dimension (0) where the export fixed it at 1, or None when no
    Reshape did: a graph exported at batch 1 (YOLOv8n's head) otherwise trains one sample at a time."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: i for i in m.graph.initializer}
    changed = False
    for n in m.graph.node:
        if n.op_type == "Reshape" and len(n.input) > 1 and n.input[1] in inits:
            shape = numpy_helper.to_array(inits[n.input[1]])
            if shape.ndim == 1 and shape.size > 1 and shape[0] == 1:
                inits[n.input[1]].CopyFrom(numpy_helper.from_array(np.concatenate([[0], shape[1:]]).astype(shape.dtype),
                                                                   n.input[1]))
                changed = True
    return m if changed else None


def _module_for_batches(model: onnx.ModelProto, xs):  # type: ignore[no-untyped-def]
    """(torch module, batch size): batches of BATCH where the graph takes them as it is, or once its
    batch-1 Reshapes copy the batch instead and it answers a batch exactly as it answers each sample."""
    import torch

    module = _torch_module(model)
    if _takes_batches(module, xs):
        return module, BATCH
    free = _batch_free(model)
    if free is None or len(xs) < 2:
        return module, 1
    batched = _torch_module(free)
    if not _takes_batches(batched, xs):
        return module, 1
    with torch.no_grad():
        together = _run(batched, xs[:2])
        apart = [torch.cat(o) for o in zip(*(_run(module, xs[i:i + 1]) for i in range(2)))]
    same = all(a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max() + 1))
               for a, b in zip(together, apart))
    return (batched, BATCH) if same else (module, 1)


def finetune_to_outputs(student: onnx.ModelProto, x: np.ndarray, targets: list[np.ndarray], epochs: int,
                        lr: float = 5e-4, over: Clock = lambda: False, seed: int = 0,
                        progress: Callable[[int, int], None] = lambda _d, _t: None,
                        weights: list[np.ndarray | None] | None = None,
                        ) -> tuple[onnx.ModelProto, FinetuneReport]:
    """Train `student` (one float input) so its outputs follow `targets` (the teacher's, sample-major, one
    array per output) on inputs `x`, each squared error times `weights` where given (same shapes; see
    `box_focus`). Stops early, keeping what it learnt, once `over()` says so."""
    import torch

    if epochs < 1 or len(x) == 0:
        raise OptimizeError("fine-tuning needs at least one epoch and one sample")
    xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    module, batch = _module_for_batches(student, xs)
    trained = _trainable(module, student)
    if not trained:
        raise OptimizeError("no convolution or dense layer of this graph can be trained after conversion")
    for p in module.parameters():
        p.requires_grad_(False)
    params = [p for _, sub in trained for p in sub.parameters()]  # type: ignore[attr-defined]
    for p in params:
        p.requires_grad_(True)
    module.eval()  # batch norms keep their statistics; the gradient still reaches their scale and shift
    ys = [torch.from_numpy(np.ascontiguousarray(t, dtype=np.float32)) for t in targets]
    ws = [None if w is None else torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
          for w in (weights or [None] * len(targets))]
    scales = []
    for t in targets:
        sd = t.astype(np.float64).std(0)
        floor = 0.1 * float(np.median(sd)) + 1e-6 * float(np.abs(t).mean() + 1e-12)
        scales.append(torch.from_numpy((1.0 / (sd + floor)).astype(np.float32)))

    steps_per_epoch = -(-len(x) // batch)
    total = epochs * steps_per_epoch
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.1)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    start, step, losses, stopped = time.perf_counter(), 0, [], False
    done_epochs = 0
    for _ in range(epochs):
        order, tot = rng.permutation(len(x)), 0.0
        for b in range(steps_per_epoch):
            idx = torch.from_numpy(order[b * batch:(b + 1) * batch])
            outs = _run(module, xs[idx])
            loss = sum(((((o - y[idx]) * s) ** 2) * (1.0 if w is None else w[idx])).mean()
                       for o, y, s, w in zip(outs, ys, scales, ws)) / len(ys)
            if not torch.isfinite(loss):
                raise OptimizeError("fine-tuning diverged (the loss is not finite)")
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item()
            step += 1
            progress(step, total)
            if over():
                stopped = True
                break
        losses.append(tot / max(1, b + 1))
        done_epochs += 1
        if stopped:
            break
    report = FinetuneReport(done_epochs, step, batch, time.perf_counter() - start, losses[0], losses[-1], stopped)
    return _write_back(student, trained), report
