"""Knowledge distillation: train a smaller zoo student on a teacher's softened outputs plus hard labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgewise.data import Splits
from edgewise.errors import OptimizeError
from edgewise.zoo.models import build, count_params
from edgewise.zoo.train import EpochHook, TrainConfig, fit


def distillation_loss(teacher: nn.Module, temperature: float, alpha: float):  # type: ignore[no-untyped-def]
    """alpha * T^2 * KL(student_T || teacher_T) + (1 - alpha) * CE(student, labels) (Hinton et al. 2015)."""
    teacher.eval()

    def loss(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft = F.softmax(teacher(x) / temperature, dim=1)
        kd = F.kl_div(F.log_softmax(logits / temperature, dim=1), soft, reduction="batchmean")
        return alpha * temperature**2 * kd + (1 - alpha) * F.cross_entropy(logits, y)

    return loss


def pick_student_width(arch: str, shape: tuple[int, ...], classes: int, teacher_params: int,
                       min_ratio: float = 4.0) -> float:
    """The widest student width with at least `min_ratio` times fewer parameters than the teacher."""
    for width in (0.75, 0.5, 0.375, 0.25, 0.125):
        if teacher_params / count_params(build(arch, shape, classes, width)) >= min_ratio:
            return width
    raise OptimizeError(f"no {arch} student is {min_ratio}x smaller than the teacher ({teacher_params} params)")


def distill(teacher: nn.Module, student_arch: str, student_width: float, splits: Splits, cfg: TrainConfig,
            temperature: float = 2.0, alpha: float = 0.5, on_epoch: EpochHook | None = None) -> nn.Module:
    torch.manual_seed(cfg.seed)
    ds = splits.train
    student = build(student_arch, ds.sample_shape, ds.num_classes, student_width)
    fit(student, splits, cfg, loss_fn=distillation_loss(teacher, temperature, alpha), on_epoch=on_epoch)
    return student
