"""Bundles for the agent tests (helpers in tests/harness.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..harness import make_bundle, shared


@pytest.fixture(scope="session")
def tier_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return shared(tmp_path_factory, "tiers", lambda root: {
        "endpoint": make_bundle(root / "e", "mlp", 8, "digits", 0.5),
        "node": make_bundle(root / "n", "cnn", 3, "digits"),
        "server": make_bundle(root / "s", "cnn", 10, "digits")})
