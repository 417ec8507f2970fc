"""The agent running a bundle as its generated C (`--runtime c`), from many request threads at once."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from edgewise.agent.runner import AgentConfig, build_agent
from edgewise.data import load_splits

X = load_splits("digits").test.x


def test_the_generated_c_gives_the_same_answers_under_concurrent_requests(digits_bundle, tmp_path):
    """The C keeps activations in one static arena: concurrent callers must take turns."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    agent = build_agent(AgentConfig(bundles=[digits_bundle], tier="endpoint", runtime="c", data_dir=tmp_path))
    inf = agent.inference
    name = inf.models.names[0]
    serial = [inf.predict(name, X[i:i + 1])[0] for i in range(64)]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(4):
            concurrent = list(pool.map(lambda i: inf.predict(name, X[i:i + 1])[0], range(64)))
            assert [r["outputs"] for r in concurrent] == [r["outputs"] for r in serial]
    agent.close()


