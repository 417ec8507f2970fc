"""Schemathesis against the agent's and the fleet's own OpenAPI schemas (every request body described):
whatever it sends, within and outside the schema, no answer is a 5xx."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edgewise.agent.runner import AgentConfig, build_agent  # noqa: E402
from edgewise.fleet.server import ServerConfig, create_app  # noqa: E402

ADMIN = "fuzz-admin-token"
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def agent_app(tier_bundles, tmp_path_factory):  # type: ignore[no-untyped-def]
    agent = build_agent(AgentConfig(bundles=[tier_bundles["server"]], tier="server",
                                    data_dir=tmp_path_factory.mktemp("fuzz-agent"), allow_bench=True))
    yield agent.app
    agent.close()


@pytest.fixture(scope="module")
def fleet_app(tmp_path_factory):  # type: ignore[no-untyped-def]
    from edgewise.httplimits import Limit

    limits = {k: Limit(1e6, 1e6, v) for k, v in (("admin", 1 << 30), ("device", 64 << 10), ("enroll", 4 << 10),
                                                 ("download", 4 << 10), ("public", 4 << 10))}
    return create_app(ServerConfig(data_dir=tmp_path_factory.mktemp("fuzz-fleet"), admin_token=ADMIN, limits=limits))


def _fuzz(app, headers: dict[str, str] | None = None) -> dict[str, int]:  # type: ignore[no-untyped-def]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen: dict[str, int] = {}
    for op in schema.get_all_operations():
        operation = op.ok()

        # Valid bodies and invalid ones (wrong types, out-of-schema values), as a careless or hostile client sends
        strategy = st.one_of(operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
                             operation.as_strategy(schemathesis.GenerationMode.NEGATIVE))

        @FUZZ
        @given(case=strategy)
        def run(case):  # type: ignore[no-untyped-def]
            response = case.call(headers=headers)
            key = f"{case.method} {case.path}"
            seen[key] = seen.get(key, 0) + 1
            assert response.status_code < 500, (key, response.status_code, response.text[:300])

        run()
    return seen


@pytest.mark.e2e  # a sweep of the whole API (about 5 s): `make test` runs it, `make test-fast` does not
def test_the_agent_api_never_answers_5xx(agent_app):
    seen = _fuzz(agent_app)
    assert {"POST /predict", "POST /v1/events", "POST /v1/samples", "POST /v1/bench/models",
            "POST /v1/bench/run"} <= set(seen)


@pytest.mark.e2e  # a sweep of the whole API (about 5 s)
def test_the_fleet_api_never_answers_5xx(fleet_app):
    seen = _fuzz(fleet_app, {"Authorization": f"Bearer {ADMIN}"})
    assert {"POST /v1/admin/rollouts", "POST /v1/device/enroll", "POST /v1/device/report"} <= set(seen)
