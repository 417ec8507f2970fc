"""Shared, session-cached fixtures: real bundled data, one quickly trained zoo model, the rapidocr model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgewise.data import Splits, load_splits


@pytest.fixture(scope="session")
def digits() -> Splits:
    return load_splits("digits")


@pytest.fixture(scope="session")
def basicmotions() -> Splits:
    return load_splits("basicmotions")


@pytest.fixture(scope="session")
def trained_cnn_dir(tmp_path_factory: pytest.TempPathFactory, digits: Splits) -> Path:
    """A small CNN trained briefly on digits and saved as `edgewise train` saves it."""
    from edgewise.zoo import TrainConfig, train

    out = tmp_path_factory.mktemp("cnn")
    train("cnn", digits, TrainConfig(epochs=8)).save(out)
    return out


@pytest.fixture(scope="session")
def rapidocr_cls() -> Path:
    """PaddleOCR's MobileNetV3 text-direction classifier, shipped inside the rapidocr-onnxruntime wheel."""
    import rapidocr_onnxruntime

    path = Path(os.path.dirname(rapidocr_onnxruntime.__file__)) / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    assert path.is_file(), "rapidocr-onnxruntime no longer ships the classifier"
    return path


@pytest.fixture
def fast_opts():  # type: ignore[no-untyped-def]
    from edgewise.optimize.search import SearchOptions

    return SearchOptions(latency_runs=15, measure_memory=False, finetune_epochs=2, finetune_min_steps=60,
                         distill_epochs=4, distill_min_steps=80, calibration_samples=64)
