"""int8 models for the C backend, made the way users make them: `optimize` for mcu-256k."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ..harness import mcu_bundle, shared, tone_keyword_bundle


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared(tmp_path_factory, "cg-digits", lambda d: mcu_bundle(d, "cnn", "digits", 6))


@pytest.fixture(scope="session")
def motion_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # per-tensor weights here, per-channel in the others; 20 epochs as given (the compiler is under test,
    # not convergence: min_steps=1 lifts the series floor of 1,000 steps)
    return shared(tmp_path_factory, "cg-motion", lambda d: mcu_bundle(d, "cnn1d", "basicmotions", 20,
                                                                    "baseline-int8-minmax-per-tensor", min_steps=1))


@pytest.fixture(scope="session")
def dscnn_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared(tmp_path_factory, "cg-dscnn", lambda d: mcu_bundle(d, "dscnn", "digits", 3))


@pytest.fixture(scope="session")
def _tone_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared(tmp_path_factory, "cg-tones", tone_keyword_bundle)


@pytest.fixture
def tone_bundle(_tone_bundle: Path, tmp_path: Path) -> Path:
    """The int8 tone 'keyword' bundle (harness.tone_keyword_bundle), trained once; each test gets its own
    copy, since compiling records the C sources in the bundle."""
    return Path(shutil.copytree(_tone_bundle, tmp_path / "tone-bundle"))
