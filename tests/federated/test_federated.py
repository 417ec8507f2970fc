"""Federated learning on Flower's simulation engine: partitions, rounds, what crosses, crashing clients."""

from __future__ import annotations

import numpy as np
import pytest

from edgewise.data import load_splits
from edgewise.errors import DataError
from edgewise.federated.apps import FedConfig
from edgewise.federated.partition import partition
from edgewise.federated.simulate import run


def test_partitions_are_seeded_disjoint_and_skewed_as_asked():
    y = load_splits("digits").train.y
    iid = partition(y, 20, "iid", seed=1)
    skew = partition(y, 20, "dirichlet:0.1", seed=1)
    assert [p.tolist() for p in skew] == [p.tolist() for p in partition(y, 20, "dirichlet:0.1", seed=1)]
    for parts in (iid, skew):
        allidx = np.concatenate(parts)
        assert len(allidx) == len(y) == len(set(allidx.tolist()))
    # label skew: the share of a client's most common class is far higher under dirichlet:0.1
    top = lambda parts: np.mean([np.bincount(y[p]).max() / len(p) for p in parts])  # noqa: E731
    assert top(skew) > 0.5 > 0.3 > top(iid)
    with pytest.raises(DataError):
        partition(y, 20, "dirichlet:0")
    with pytest.raises(DataError):
        partition(y, 20, "zipf")


def test_simulation_improves_round_over_round_and_only_weights_and_metrics_cross(tmp_path):
    # Execute: 4 clients, 3 rounds of FedAvg on digits; client 3 crashes from round 2 on
    h = run(FedConfig(model="cnn", clients=4, rounds=3, partition="iid", fail_clients=[3]), tmp_path / "fl",
            baseline=False)
    acc = [r["accuracy"] for r in h["rounds"]]
    # Assert: better every round, the rounds completed without the crashed client
    assert len(acc) == 4 and all(b > a for a, b in zip(acc, acc[1:])) and acc[-1] > 0.8, acc
    assert (tmp_path / "fl" / "history.png").stat().st_size > 0
    from edgewise.federated.apps import build_module
    from edgewise.federated.simulate import client_data

    tensors = build_module(FedConfig(), client_data(FedConfig(clients=4))[0]).state_dict()
    crossed = h["crossed"]
    errors = [c for c in crossed if c["error"]]
    assert len(errors) == 2 and {c["round"] for c in errors} == {2, 3}
    for c in crossed:
        if not c["error"]:
            assert set(c["records"]) == {"arrays", "metrics"}
            assert c["records"]["arrays"][0] == "ArrayRecord" and len(c["records"]["arrays"][1]) == len(tensors)
            assert c["records"]["metrics"][1] == ["num-examples", "train_loss"]
