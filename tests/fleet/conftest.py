"""A running fleet server per test (helpers in tests/harness.py; the signed bundles in tests/conftest.py)."""

from __future__ import annotations

import pytest

from ..harness import FleetProc


@pytest.fixture
def fleet(fleet_kit, tmp_path):
    f = FleetProc(tmp_path / "fleet", [fleet_kit["pub"], fleet_kit["rogue_pub"]]).start()
    yield f
    f.kill()
