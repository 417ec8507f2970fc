"""What a client does with the global model: load it, train on its own data, return the new weights."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODES = ("full", "last")


def get_weights(module: nn.Module) -> OrderedDict[str, np.ndarray]:
    """What a federation exchanges: every floating tensor of the state (parameters and BatchNorm running
    statistics). Integer bookkeeping (BatchNorm's num_batches_tracked, unused with a momentum) stays with
    each copy: as an "update" it would be a step count, and it dominated the update's norm that DP clips."""
    return OrderedDict((k, v.detach().cpu().numpy().copy()) for k, v in module.state_dict().items()
                       if v.is_floating_point())


def set_weights(module: nn.Module, weights: dict[str, np.ndarray]) -> None:
    state = module.state_dict()
    missing = [k for k, v in state.items() if v.is_floating_point() and k not in weights]
    if missing:
        raise ValueError(f"weights lack {len(missing)} tensor(s) of the model, e.g. {missing[0]}")
    module.load_state_dict(OrderedDict((k, torch.from_numpy(np.asarray(weights[k])).to(v.dtype) if k in weights else v)
                                       for k, v in state.items()))


def last_layer(module: nn.Module) -> nn.Module:
    """The classifier head: the last Linear layer."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no Linear layer to train alone")
    return linears[-1]


def train_local(module: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, batch: int = 32,
                mode: str = "full", proximal_mu: float = 0.0, seed: int = 0) -> float:
    """Local SGD with momentum. `mode="last"` trains only the classifier head (a device that cannot afford
    full backprop); `proximal_mu` > 0 adds FedProx's (mu/2)||w - w_global||^2. Returns the mean loss."""
    if mode not in MODES:
        raise ValueError(f"client mode must be one of {MODES}")
    torch.manual_seed(seed)
    params = list(last_layer(module).parameters()) if mode == "last" else list(module.parameters())
    for p in module.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    anchor = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    module.train()
    if mode == "last":  # frozen feature layers keep their statistics too
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    total, seen = 0.0, 0
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            if len(idx) < 2:
                continue
            opt.zero_grad()
            loss = F.cross_entropy(module(xt[idx]), yt[idx])
            if proximal_mu > 0:
                loss = loss + proximal_mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
    for p in module.parameters():
        p.requires_grad_(True)
    module.eval()
    return total / max(1, seen)


@torch.no_grad()
def accuracy(module: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    module.eval()
    logits = module(torch.from_numpy(x))
    return float((logits.argmax(1).numpy() == y).mean()), float(F.cross_entropy(logits, torch.from_numpy(y)))
