"""Federated learning on Flower's simulation engine: partitions, rounds, what crosses, crashing clients.

One test runs on Ray (Flower's simulation engine) and checks that the in-process engine (LocalGrid) gives
the same run; the others use the in-process engine, which runs the same ServerApp, ClientApp and mods
without Ray's start-up."""

from __future__ import annotations

import numpy as np
import pytest

from edgewise.data import load_splits
from edgewise.errors import DataError
from edgewise.federated.config import FedConfig
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


@pytest.mark.e2e
def test_simulation_improves_round_over_round_and_only_weights_and_metrics_cross(tmp_path):
    # Execute: 4 clients, 3 rounds of FedAvg on digits; client 3 crashes from round 2 on
    h = run(FedConfig(model="cnn", clients=4, rounds=3, partition="iid", fail_clients=[3]), tmp_path / "fl",
            baseline=False)
    acc = [r["accuracy"] for r in h["rounds"]]
    # Assert: better every round, the rounds completed without the crashed client
    assert len(acc) == 4 and all(b > a for a, b in zip(acc, acc[1:])) and acc[-1] > 0.8, acc
    assert (tmp_path / "fl" / "history.png").stat().st_size > 0
    from edgewise.federated.config import build_module
    from edgewise.federated.simulate import client_data
    from edgewise.federated.task import get_weights

    tensors = get_weights(build_module(FedConfig(), client_data(FedConfig(clients=4))[0]))
    assert not any("num_batches_tracked" in k for k in tensors) and any("running_var" in k for k in tensors)
    # The in-process engine the other tests use runs the same ServerApp and ClientApp to the same result
    local = run(FedConfig(model="cnn", clients=4, rounds=3, partition="iid", fail_clients=[3]), tmp_path / "local",
                baseline=False, engine="local")
    assert [r["accuracy"] for r in local["rounds"]] == pytest.approx(acc, abs=0.02)
    assert sorted((c["round"], c["error"]) for c in local["crossed"]) == sorted(
        (c["round"], c["error"]) for c in h["crossed"])
    crossed = h["crossed"]
    errors = [c for c in crossed if c["error"]]
    assert len(errors) == 2 and {c["round"] for c in errors} == {2, 3}
    for c in crossed:
        if not c["error"]:
            assert set(c["records"]) == {"arrays", "metrics"}
            assert c["records"]["arrays"][0] == "ArrayRecord" and len(c["records"]["arrays"][1]) == len(tensors)
            assert c["records"]["metrics"][1] == ["num-examples", "train_loss"]


def test_dp_epsilon_follows_the_gaussian_mechanism():
    from edgewise.federated.dp import epsilon

    # one round at z=1, delta=1e-5: min_a a/2 + ln(1e5)/(a-1) = 5.30 (at a = 1 + sqrt(2 ln 1e5))
    assert abs(epsilon(1.0, 1) - 5.2985) < 0.01
    assert epsilon(2.0, 30) < epsilon(1.0, 30) < epsilon(1.0, 60)
    assert epsilon(0.0, 10) == float("inf")


def test_dp_run_clips_on_clients_adds_noise_and_states_its_epsilon(tmp_path):
    # Execute: clipping on the clients (Flower's fixedclipping_mod), noise on the server
    h = run(FedConfig(model="mlp", width=0.5, clients=3, rounds=2, partition="iid", dp_clip=0.5, dp_noise=0.8,
                      lr=0.1), tmp_path / "dp", baseline=False, engine="local")
    clip_only = FedConfig(model="mlp", width=0.5, clients=3, rounds=2, partition="iid", dp_clip=0.5, lr=0.1)
    run(clip_only, tmp_path / "plain", baseline=False, engine="local")
    # Assert: the run completed and says what it guarantees; the noise changed the model it produced
    from edgewise.federated.config import build_module
    from edgewise.federated.dp import epsilon
    from edgewise.federated.simulate import client_data
    from edgewise.federated.task import get_weights

    assert h["dp"]["epsilon"] == pytest.approx(epsilon(0.8, 2, 1e-5)) and "client-level" in h["dp"]["guarantee"]
    assert len(h["rounds"]) == 3 and all(not c["error"] for c in h["crossed"])
    assert all("unit-weight" in c["records"]["metrics"][1] for c in h["crossed"])
    w_dp = np.load(tmp_path / "dp" / "global_weights.npz")
    w_plain = np.load(tmp_path / "plain" / "global_weights.npz")
    assert any(not np.allclose(w_dp[k], w_plain[k]) for k in w_plain.files)
    # clipping happened on the clients: each round moves the model by at most the clipping norm
    init = get_weights(build_module(clip_only, client_data(clip_only)[0]))
    moved = np.sqrt(sum(float(((w_plain[k] - v) ** 2).sum()) for k, v in init.items()
                        if np.issubdtype(v.dtype, np.floating)))
    assert 0 < moved <= 2 * 0.5 + 1e-4


@pytest.mark.e2e
def test_publish_goes_from_federated_training_to_a_signed_bundle_in_a_rollout(tmp_path, fleet_kit):
    # Prepare: a real fleet server that trusts the release key, and one enrolled device tag
    import json
    import subprocess
    import sys

    from edgewise.bundle import read_bundle
    from edgewise.bundle.signing import TrustStore, verify_signed_bundle

    from ..harness import ADMIN, FleetProc

    fleet = FleetProc(tmp_path / "fleet", [fleet_kit["pub"]]).start()
    try:
        fleet.admin.enroll_token(["lab"])
        # Execute: one command, from federated rounds to a rollout
        proc = subprocess.run([sys.executable, "-m", "edgewise.cli", "federate", "--model", "mlp", "--clients", "3",
                               "--rounds", "2", "--engine", "local", "--out", str(tmp_path / "fl"), "--publish",
                               "--target", "edge-node",
                               "--key", str(fleet_kit["key"]), "--tag", "lab", "--version", "2.0.0",
                               "--server", fleet.url], capture_output=True, text=True,
                              env={**__import__("os").environ, "EDGEWISE_ADMIN_TOKEN": ADMIN}, timeout=600)
        models = fleet.admin.models()
        rollouts = fleet.admin.rollouts()
    finally:
        fleet.kill()
    # Assert: a validly signed bundle with the federated model's metrics is in the registry, rolling out
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(m["name"], m["version"], m["signature"]) for m in models] == [("mlp-digits", "2.0.0", "valid")]
    assert rollouts[0]["model"] == "mlp-digits" and rollouts[0]["selector"] == "lab"
    bundle = tmp_path / "fl" / "optimized" / "bundle"
    manifest, _ = verify_signed_bundle(bundle, TrustStore.load([fleet_kit["pub"]]))
    history = json.loads((tmp_path / "fl" / "history.json").read_text())
    fed = read_bundle(bundle).metrics["federated"]
    assert fed["test_accuracy"] == history["rounds"][-1]["accuracy"] and fed["clients"] == 3
    assert manifest.recipe[0]["pass"] == "federated"


def test_secagg_server_sees_only_masked_updates_and_still_gets_fedavgs_model(tmp_path):
    from edgewise.federated.config import build_module
    from edgewise.federated.simulate import client_data
    from edgewise.federated.task import get_weights

    # Execute: the same 4-client run with and without SecAgg+; client 3 crashes mid-protocol from round 2
    # (after it shared its keys), so the server must unmask the round without it
    # (both runs also score each round on the clients' held-out samples: the legacy evaluate path)
    cfg = dict(model="mlp", width=0.5, clients=4, rounds=3, partition="iid", fail_clients=[3], eval_fraction=1.0)
    plain = run(FedConfig(**cfg), tmp_path / "plain", baseline=False, engine="local")
    sa = run(FedConfig(**cfg, secagg=True), tmp_path / "sa", baseline=False, engine="local")
    # Assert: under SecAgg+ no reply carried a model: every ArrayRecord that crossed was empty, the updates
    # came as masked vectors (one per client a round, three once client 3 is gone)
    replies = [c for c in sa["crossed"] if not c["error"]]
    for c in replies:
        for kind, keys, nbytes in c["records"].values():
            assert kind != "ArrayRecord" or (keys == [] and nbytes == 0), c
    masked = [c for c in replies if "masked_params" in c["records"].get("secaggplus_configs", ["", []])[1]]
    assert [sum(c["round"] == r for c in masked) for r in (1, 2, 3)] == [4, 3, 3]
    assert {c["round"] for c in sa["crossed"] if c["error"]} == {2, 3} and sa["secagg"]["reconstruction_threshold"]
    # ... and the model it produced is FedAvg's, up to SecAgg+'s quantization
    a, b = np.load(tmp_path / "plain" / "global_weights.npz"), np.load(tmp_path / "sa" / "global_weights.npz")
    gap = max(float(np.abs(a[k] - b[k]).max()) for k in a.files)
    init = get_weights(build_module(FedConfig(**cfg), client_data(FedConfig(**cfg))[0]))
    moved = max(float(np.abs(a[k] - init[k]).max()) for k in a.files)
    assert gap < 5e-3 and gap < moved / 20, (gap, moved)
    assert [r["accuracy"] for r in sa["rounds"]] == pytest.approx([r["accuracy"] for r in plain["rounds"]], abs=0.01)
    dev = [r["device_accuracy"] for r in sa["rounds"][1:]]
    assert len(dev) == 3 and dev == pytest.approx([r["device_accuracy"] for r in plain["rounds"][1:]], abs=0.02)


def test_an_output_directory_is_replaced_only_when_it_holds_an_earlier_run(tmp_path):
    from edgewise.errors import EdgewiseError
    from edgewise.federated.history import fresh_run_dir

    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    with pytest.raises(EdgewiseError, match="not empty"):
        fresh_run_dir(work)
    assert (work / "notes.txt").read_text() == "mine"
    earlier = tmp_path / "fl"
    earlier.mkdir()
    (earlier / "history.json").write_text("{}")
    (earlier / "history.png").write_text("x")
    assert fresh_run_dir(earlier) == earlier.resolve() and list(earlier.iterdir()) == []


def test_a_client_sending_garbage_is_dropped_or_outvoted(tmp_path):
    # Execute: 5 clients, client 4 returns its weights plus N(0, 10) noise every round
    acc, dropped = {}, {}
    for strategy, ratio in (("fedavg", 0.0), ("fedavg", 5.0), ("fedmedian", 0.0)):
        h = run(FedConfig(model="mlp", width=0.5, clients=5, rounds=3, partition="iid", strategy=strategy,
                          poison_clients=[4], lr=0.1, max_update_ratio=ratio), tmp_path / f"{strategy}-{ratio}",
                baseline=False, engine="local")
        acc[strategy, ratio] = [r["accuracy"] for r in h["rounds"]]
        dropped[strategy, ratio] = h["dropped_updates"]
    # Assert: without the update bound, the average is ruined by one client; with it (the default), the
    # poisoned update is dropped every round and FedAvg learns; the median learns without it
    assert max(acc["fedavg", 0.0]) < 0.3 and not dropped["fedavg", 0.0], acc
    assert len(dropped["fedavg", 5.0]) == 3 and all("update norm" in d["why"] for d in dropped["fedavg", 5.0])
    for key in (("fedavg", 5.0), ("fedmedian", 0.0)):
        assert acc[key][-1] > 0.7 and acc[key][-1] > acc[key][1], acc


def test_nan_and_wrong_shaped_updates_are_named_and_valid_ones_pass():
    import numpy as np

    from edgewise.federated.server import _invalid_update

    model = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]
    expected = [(a.shape, a.dtype) for a in model]
    assert _invalid_update([a + 1 for a in model], expected) is None
    assert "NaN" in _invalid_update([model[0], np.full(2, np.nan, np.float32)], expected)
    assert "the model's is float32[3, 2]" in _invalid_update([np.zeros((2, 3), np.float32), model[1]], expected)
    assert "1 arrays" in _invalid_update(model[:1], expected)
    assert "float64" in _invalid_update([model[0].astype(np.float64), model[1]], expected)
