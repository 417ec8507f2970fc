"""A running fleet server per test (helpers in tests/harness.py; the signed bundles in tests/conftest.py)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from ..harness import FleetInProc, FleetProc, free_port


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


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    return None


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server, started for this test run (one per xdist worker)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is missing in CI (.ci/run installs it)")
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="edgewise-pg-"))  # not under pytest's 0700 root-owned tree
    data, port = root / "data", free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        user = "postgres" if _has_user("postgres") else "nobody"
        shutil.chown(root, user)
        as_user = ["runuser", "-u", user, "--"]
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "edgewise", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    url = f"postgresql://edgewise@127.0.0.1:{port}/postgres"
    yield url
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture
def pg_db(postgres_url):  # type: ignore[no-untyped-def]
    """A new, empty database on that server, for one test."""
    import uuid

    import psycopg

    name = "t" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_url, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    yield postgres_url.rsplit("/", 1)[0] + "/" + name
