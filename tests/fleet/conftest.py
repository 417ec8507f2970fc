"""A running fleet server per test (helpers in tests/harness.py; the signed bundles in tests/conftest.py)."""

from __future__ import annotations

import os

import pytest

from ..harness import FleetInProc, FleetProc, start_postgres


@pytest.fixture(scope="session", autouse=True)
def _fleet_on_postgresql_when_asked(request):  # type: ignore[no-untyped-def]
    """EDGEWISE_TEST_FLEET_WORKERS=N: every fleet server in these tests runs as N workers sharing a
    PostgreSQL database (the in-process ones on PostgreSQL too), as `fleet serve --workers N` would."""
    if int(os.environ.get("EDGEWISE_TEST_FLEET_WORKERS", "1")) > 1 and not os.environ.get("EDGEWISE_TEST_FLEET_DB"):
        os.environ["EDGEWISE_TEST_FLEET_DB"] = request.getfixturevalue("postgres_url")
    yield


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


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server, started for this test run (one per xdist worker)."""
    try:
        url, stop = start_postgres()
    except FileNotFoundError:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is missing in CI (.ci/run installs it)")
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    yield url
    stop()


@pytest.fixture
def pg_db(postgres_url):  # type: ignore[no-untyped-def]
    """A new, empty database on that server, for one test."""
    import uuid

    import psycopg

    name = "t" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_url, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    yield postgres_url.rsplit("/", 1)[0] + "/" + name
