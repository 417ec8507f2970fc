"""int8 models for the C backend, made the way users make them: `optimize` for mcu-256k."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..harness import mcu_bundle


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mcu_bundle(tmp_path_factory.mktemp("cg-digits"), "cnn", "digits", 6)


@pytest.fixture(scope="session")
def motion_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # per-tensor weights here, per-channel in the others
    return mcu_bundle(tmp_path_factory.mktemp("cg-motion"), "cnn1d", "basicmotions", 20,
                       "baseline-int8-minmax-per-tensor")


@pytest.fixture(scope="session")
def dscnn_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mcu_bundle(tmp_path_factory.mktemp("cg-dscnn"), "dscnn", "digits", 3)
