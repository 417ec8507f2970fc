import numpy as np
import pytest

from edgewise.errors import OptimizeError
from edgewise.optimize.distill import distill, pick_student_width
from edgewise.optimize.prune import channel_prune, magnitude_prune, structured_prune
from edgewise.zoo import TrainConfig, build, count_params, evaluate_torch, load_trained
from edgewise.zoo.export import export_onnx


@pytest.mark.parametrize("arch, shape", [("cnn", (1, 8, 8)), ("dscnn", (1, 8, 8)), ("cnn1d", (6, 100)),
                                         ("mlp", (1, 8, 8))])
def test_channel_pruning_removes_channels_for_real(arch, shape, tmp_path):
    # Prepare
    model = build(arch, shape, 4).eval()
    # Execute
    pruned = channel_prune(model, 0.6)
    export_onnx(model, shape, tmp_path / "a.onnx")
    export_onnx(pruned, shape, tmp_path / "b.onnx")
    # Assert: forward works, >= 50% fewer params, the exported file shrinks with them
    import torch

    assert pruned(torch.zeros((2, *shape))).shape == (2, 4)
    assert count_params(pruned) <= 0.5 * count_params(model) + 200
    assert (tmp_path / "b.onnx").stat().st_size < 0.6 * (tmp_path / "a.onnx").stat().st_size


def test_structured_pruning_with_finetuning_keeps_accuracy(trained_cnn_dir, digits):
    tm = load_trained(trained_cnn_dir)
    before = evaluate_torch(tm.module, digits.test)
    pruned = structured_prune(tm.module, 0.65, digits, TrainConfig(epochs=4, lr=1e-3))
    assert count_params(pruned) < 0.5 * tm.params
    assert evaluate_torch(pruned, digits.test) > before - 0.03


def test_magnitude_pruning_reaches_the_sparsity(trained_cnn_dir, digits):
    tm = load_trained(trained_cnn_dir)
    pruned, sparsity = magnitude_prune(tm.module, 0.5, digits, TrainConfig(epochs=1, lr=1e-3))
    assert 0.49 <= sparsity <= 0.51
    assert count_params(pruned) == tm.params, "magnitude pruning zeroes weights; it removes nothing"


def test_pruning_rejects_bad_ratios_and_foreign_models():
    from torch import nn

    with pytest.raises(OptimizeError):
        channel_prune(build("cnn", (1, 8, 8), 3), 1.5)
    with pytest.raises(OptimizeError, match="sequential"):
        channel_prune(nn.Linear(3, 3), 0.5)


def test_distilled_student_is_4x_smaller_and_learns(trained_cnn_dir, digits):
    tm = load_trained(trained_cnn_dir)
    width = pick_student_width("cnn", (1, 8, 8), 10, tm.params)
    student = distill(tm.module, "cnn", width, digits, TrainConfig(epochs=6))
    assert tm.params / count_params(student) >= 4
    assert evaluate_torch(student, digits.test) > 0.8
    assert np.isfinite(count_params(student))
