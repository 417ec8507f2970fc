"""Model architectures in plain torch, their training loop and ONNX export."""

from edgewise.zoo.models import ARCHITECTURES, build, count_params
from edgewise.zoo.train import TrainConfig, TrainedModel, evaluate_torch, load_trained, train

__all__ = [
    "ARCHITECTURES",
    "TrainConfig",
    "TrainedModel",
    "build",
    "count_params",
    "evaluate_torch",
    "load_trained",
    "train",
]
