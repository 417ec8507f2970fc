"""Shared, session-cached fixtures: real bundled data, one quickly trained zoo model, the rapidocr model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgewise.bundle.signing import generate_keys
from edgewise.data import Splits, load_splits

from .harness import make_bundle, mcu_bundle, shared, versioned


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

    def build(out: Path) -> Path:
        train("cnn", digits, TrainConfig(epochs=8)).save(out)
        return out

    return shared(tmp_path_factory, "cnn", build)


@pytest.fixture(scope="session")
def vibration_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An autoencoder trained on the bundled vibration set's normal runs, optimized to int8 for mcu-256k."""
    return shared(tmp_path_factory, "vibration", lambda d: mcu_bundle(d, "autoencoder", "vibration", 30))


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


@pytest.fixture(scope="session")
def fleet_kit(tmp_path_factory):
    """Keys and signed bundles of model `digits`: 1.0.0, 1.1.0 (good), and bad variants; and of a second model,
    `digits-lite` (another network): 2.0.0 and 2.1.0."""
    def build(root: Path) -> dict:
        generate_keys(root / "keys", "release")
        generate_keys(root / "keys", "rogue")
        key, rogue = root / "keys" / "release.key", root / "keys" / "rogue.key"
        base = make_bundle(root / "m", "mlp", 2, "digits", 0.5)
        other = make_bundle(root / "m2", "mlp", 1, "digits", 0.25)
        b = {"1.0.0": versioned(base, root / "b100", "1.0.0", key),
             "1.1.0": versioned(base, root / "b110", "1.1.0", key)}
        b["noload"] = versioned(base, root / "bnoload", "1.2.0", key, model_bytes=b"not an onnx model at all")
        b["selftest"] = versioned(base, root / "bself", "1.3.0", key,
                                  model_bytes=(other / "model.onnx").read_bytes(), golden_from=b["1.0.0"])
        b["rogue"] = versioned(base, root / "brogue", "1.4.0", rogue)
        b["lite-2.0.0"] = versioned(other, root / "l200", "2.0.0", key, name="digits-lite")
        b["lite-2.1.0"] = versioned(other, root / "l210", "2.1.0", key, name="digits-lite")
        return {"root": root, "key": key, "pub": root / "keys" / "release.pub",
                "rogue_pub": root / "keys" / "rogue.pub", "bundles": b}

    return shared(tmp_path_factory, "fleet-kit", build)
