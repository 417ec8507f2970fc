"""Pruning: global magnitude pruning (zeros weights) and structured channel pruning (removes channels).

Only structured pruning shrinks the exported file and the compute; magnitude pruning leaves a dense
ONNX file of the same size, which is why the search reports it but does not rely on it for size.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from edgewise.data import Splits
from edgewise.errors import OptimizeError
from edgewise.zoo.layers import ConvBNAct
from edgewise.zoo.train import EpochHook, TrainConfig, fit

_PASSTHROUGH = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
                nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Identity)


def magnitude_prune(module: nn.Module, sparsity: float, splits: Splits, finetune: TrainConfig,
                    on_epoch: EpochHook | None = None) -> tuple[nn.Module, float]:
    """Zero the `sparsity` fraction of smallest-magnitude weights across all conv/linear layers, fine-tune
    with the mask held, and make it permanent. Returns the model and its achieved weight sparsity."""
    if not 0.0 < sparsity < 1.0:
        raise OptimizeError(f"sparsity must be between 0 and 1, got {sparsity}")
    m = copy.deepcopy(module)
    params = [(mod, "weight") for mod in m.modules() if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=sparsity)
    fit(m, splits, finetune, on_epoch=on_epoch)
    for mod, name in params:
        tprune.remove(mod, name)
    total = sum(mod.weight.numel() for mod, _ in params)
    zeros = sum(int((mod.weight == 0).sum()) for mod, _ in params)
    return m, zeros / total


def _slice_conv(conv: nn.Conv1d | nn.Conv2d, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None,
                depthwise: bool = False) -> nn.Module:
    w = conv.weight.data
    if out_idx is not None:
        w = w[out_idx]
    if in_idx is not None and not depthwise:
        w = w[:, in_idx]
    cout = w.shape[0]
    cin = cout if depthwise else w.shape[1] * conv.groups
    new = type(conv)(cin, cout, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     groups=cout if depthwise else conv.groups, bias=conv.bias is not None)
    new.weight.data = w.clone()
    if conv.bias is not None:
        new.bias.data = (conv.bias.data[out_idx] if out_idx is not None else conv.bias.data).clone()
    return new


def _slice_bn(bn: nn.BatchNorm1d | nn.BatchNorm2d, idx: torch.Tensor) -> nn.Module:
    new = type(bn)(len(idx), eps=bn.eps, momentum=bn.momentum)
    for name in ("weight", "bias"):
        getattr(new, name).data = getattr(bn, name).data[idx].clone()
    new.running_mean = bn.running_mean[idx].clone()
    new.running_var = bn.running_var[idx].clone()
    return new


def _slice_linear(fc: nn.Linear, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> nn.Linear:
    w = fc.weight.data
    b = fc.bias.data if fc.bias is not None else None
    if out_idx is not None:
        w, b = w[out_idx], (b[out_idx] if b is not None else None)
    if in_idx is not None:
        w = w[:, in_idx]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    new.weight.data = w.clone()
    if b is not None:
        new.bias.data = b.clone()
    return new


def _keep(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    n = max(1, int(round(len(scores) * ratio)))
    return torch.sort(torch.topk(scores, n).indices).values


def channel_prune(module: nn.Module, keep_ratio: float) -> nn.Module:
    """Remove the (1 - keep_ratio) least important channels of every conv and hidden linear layer.

    Importance is |BN gamma| x L1 norm of the filter. Consumers lose the matching input channels;
    depthwise convs follow their producer. The classifier's outputs are never pruned. Works on the
    zoo's sequential models (mlp, cnn, dscnn, cnn1d).
    """
    if not 0.0 < keep_ratio < 1.0:
        raise OptimizeError(f"keep ratio must be between 0 and 1, got {keep_ratio}")
    if not isinstance(module, nn.Sequential):
        raise OptimizeError("structured pruning supports the zoo's sequential models (mlp, cnn, dscnn, cnn1d)")
    layers = list(copy.deepcopy(module))
    last_linear = max((i for i, layer in enumerate(layers) if isinstance(layer, nn.Linear)), default=-1)
    prev: torch.Tensor | None = None
    out: list[nn.Module] = []
    for i, layer in enumerate(layers):
        if isinstance(layer, ConvBNAct):
            conv, bn = layer.conv, layer.bn
            depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
            if conv.groups > 1 and not depthwise:
                raise OptimizeError("structured pruning does not handle grouped (non-depthwise) convolutions")
            if depthwise:
                idx = prev if prev is not None else torch.arange(conv.out_channels)
                new_conv = _slice_conv(conv, idx, None, depthwise=True)
            else:
                score = bn.weight.data.abs() * conv.weight.data.abs().flatten(1).sum(1)
                idx = _keep(score, keep_ratio)
                new_conv = _slice_conv(conv, idx, prev)
            rest = list(layer)[2:]
            new = ConvBNAct.__new__(ConvBNAct)
            nn.Sequential.__init__(new, new_conv, _slice_bn(bn, idx), *rest)
            out.append(new)
            prev = idx
        elif isinstance(layer, nn.Linear):
            if i == last_linear:
                out.append(_slice_linear(layer, None, prev))
                prev = None
            else:
                idx = _keep(layer.weight.data.abs().sum(1), keep_ratio)
                out.append(_slice_linear(layer, idx, prev))
                prev = idx
        elif isinstance(layer, _PASSTHROUGH):
            out.append(layer)
        else:
            raise OptimizeError(f"structured pruning cannot handle layer {type(layer).__name__}")
    return nn.Sequential(*out).eval()


def structured_prune(module: nn.Module, keep_ratio: float, splits: Splits, finetune: TrainConfig,
                     on_epoch: EpochHook | None = None) -> nn.Module:
    """Channel pruning followed by fine-tuning (which restores the best validation epoch)."""
    pruned = channel_prune(module, keep_ratio)
    fit(pruned, splits, finetune, on_epoch=on_epoch)
    return pruned
