"""int8 models for the C backend, made the way users make them: `optimize` for mcu-256k."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgewise.optimize.pipeline import optimize
from edgewise.optimize.search import SearchOptions
from edgewise.targets import load_target

OPTS = dict(latency_runs=5, measure_memory=False, calibration_samples=64, torch_passes=False)


def _mcu_bundle(tmp: Path, arch: str, data: str, epochs: int, only: str = "baseline-int8-minmax") -> Path:
    """The search picks among `only`; the tolerance is wide because these fixtures test the compiler
    (BasicMotions' 16-sample validation split moves 6.25 points per sample)."""
    from edgewise.data import load_splits
    from edgewise.zoo import TrainConfig, train

    train(arch, load_splits(data), TrainConfig(epochs=epochs)).save(tmp / "train")
    opts = SearchOptions(**OPTS, only=(only,), max_accuracy_drop=20.0)
    outcome = optimize(tmp / "train", data, load_target("mcu-256k"), tmp / "opt", opts)
    assert outcome.bundle is not None, outcome.result.why
    return outcome.bundle


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _mcu_bundle(tmp_path_factory.mktemp("cg-digits"), "cnn", "digits", 6)


@pytest.fixture(scope="session")
def motion_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # per-tensor weights here, per-channel in the others
    return _mcu_bundle(tmp_path_factory.mktemp("cg-motion"), "cnn1d", "basicmotions", 20,
                       "baseline-int8-minmax-per-tensor")


@pytest.fixture(scope="session")
def dscnn_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _mcu_bundle(tmp_path_factory.mktemp("cg-dscnn"), "dscnn", "digits", 3)


def build_host(src: dict[str, str], out: Path) -> Path:
    """Write the sources and build them as the toolchain does: gcc -std=c99 -Wall -Wextra -Werror -O2."""
    from edgewise.codegen.toolchain import build_host as toolchain_build

    out.mkdir(parents=True, exist_ok=True)
    for name, text in src.items():
        (out / name).write_text(text)
    return toolchain_build(out, out / "model")


def run_program(exe: Path, samples: np.ndarray) -> np.ndarray:
    proc = subprocess.run([str(exe)], input=np.ascontiguousarray(samples, dtype=np.int8).tobytes(),
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().strip().splitlines()
    return np.array([[int(v) for v in line.split("|")[0].split()] for line in lines])


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
