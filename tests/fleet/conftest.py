"""A running fleet server per test (helpers in tests/harness.py; the signed bundles in tests/conftest.py)."""

from __future__ import annotations

import pytest

from ..harness import FleetInProc, FleetProc


@pytest.fixture
def fleet(fleet_kit, tmp_path):
    """A real `edgewise fleet serve` process."""
    f = FleetProc(tmp_path / "fleet", [fleet_kit["pub"], fleet_kit["rogue_pub"]]).start()
    yield f
    f.kill()


@pytest.fixture
def inproc_fleet(fleet_kit, tmp_path):
    """The same server's app in this process, on a fake clock that the test moves (harness.FleetInProc)."""
    f = FleetInProc(tmp_path / "fleet", [fleet_kit["pub"], fleet_kit["rogue_pub"]])
    yield f
    f.kill()
