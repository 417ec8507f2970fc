"""Flower ServerApp (and the ClientApp in `client.py`) for the zoo's models (NumPy/torch weights in ArrayRecords).

The same two apps run on Flower's simulation engine (`simulate.py`) and on its deployment engine
(`deploy.py`); only where the configuration and the client's data come from differs.

The ServerApp runs the chosen strategy (FedAvg, FedProx or FedAdam) with per-round client sampling and a
round timeout (stragglers are dropped from the round, not waited for), evaluates the global model on the
held-out test split after every round, and records what each client reply carried (record types, keys and
sizes, as the server received them), so a test can assert that only parameters and metrics crossed.

Privacy options, chosen per run:
- DP (`dp_clip`, `dp_noise`): clients clip their update (Flower's fixedclipping_mod), the server adds
  Gaussian noise to the unweighted average (DifferentialPrivacyClientSideFixedClipping).
- SecAgg+ (`secagg`): Flower's SecAggPlusWorkflow with secaggplus_mod; each client sends its weighted,
  quantized update masked by pairwise and private masks, and the server learns only the sum. Clients send
  their update (new - global) rather than their weights, so the quantizer's clipping range holds it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgewise.errors import FederatedError
from edgewise.federated.config import ClientData, FedConfig, build_module
from edgewise.federated.task import accuracy, get_weights, set_weights

# --------------------------------------------------------------------------------------------- server


class RecordingGrid:
    """The Grid the strategy talks through: it records what every client reply carried as it arrived, and
    drops train replies whose weights are not a valid update of the global model (wrong shapes or dtypes,
    NaN or infinite values, or an update norm far above the round's median), so one broken or malicious
    client cannot poison or crash the aggregation. Dropped replies look to the strategy like a client that
    did not answer; each is counted in `dropped`."""

    def __init__(self, grid: Any, path: Path, expected: list[np.ndarray] | None = None,
                 max_update_ratio: float = 0.0) -> None:
        self._grid = grid
        self._path = path
        self.round = 1
        self.expected = [(a.shape, a.dtype) for a in expected or []]
        self.max_update_ratio = max_update_ratio
        self.dropped: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        messages = list(messages)
        replies = list(self._grid.send_and_receive(messages, *args, **kwargs))
        rejected = self._check(messages, replies) if self.expected else {}
        with open(self._path, "a") as f:
            for i, m in enumerate(replies):
                rec: dict[str, Any] = {"round": self.round, "type": m.metadata.message_type, "error": m.has_error(),
                                       "node": m.metadata.src_node_id}
                if not m.has_error():
                    rec["records"] = {k: [type(v).__name__, sorted(v.keys()), _nbytes(v)]
                                      for k, v in m.content.items()}
                if i in rejected:
                    rec["dropped"] = rejected[i]
                f.write(json.dumps(rec) + "\n")
        for i, why in rejected.items():
            self.dropped.append({"round": self.round, "node": replies[i].metadata.src_node_id, "why": why})
        return [m for i, m in enumerate(replies) if i not in rejected]

    def _check(self, messages: list[Any], replies: list[Any]) -> dict[int, str]:
        sent = next((m.content["arrays"] for m in messages if "arrays" in m.content), None)
        if sent is None:
            return {}
        now = sent.to_numpy_ndarrays()
        bad: dict[int, str] = {}
        norms: dict[int, float] = {}
        for i, m in enumerate(replies):
            if m.has_error() or m.metadata.message_type != "train" or "arrays" not in m.content:
                continue
            try:
                arrays = m.content["arrays"].to_numpy_ndarrays()
            except Exception as e:  # noqa: BLE001 - whatever a client sent, it must not stop the round
                bad[i] = f"unreadable arrays ({type(e).__name__})"
                continue
            why = _invalid_update(arrays, self.expected)
            if why:
                bad[i] = why
            else:
                norms[i] = float(np.sqrt(sum(float(np.sum((a.astype(np.float64) - b) ** 2))
                                             for a, b in zip(arrays, now))))
        if self.max_update_ratio > 0 and len(norms) >= 3:
            median = float(np.median(list(norms.values())))
            for i, n in norms.items():
                if n > self.max_update_ratio * max(median, 1e-12):
                    bad[i] = f"update norm {n:.3g} is over {self.max_update_ratio:g}x the round's median {median:.3g}"
        return bad


def _invalid_update(arrays: list[np.ndarray], expected: list[tuple[tuple[int, ...], np.dtype]]) -> str | None:
    if len(arrays) != len(expected):
        return f"{len(arrays)} arrays, the model has {len(expected)}"
    for k, (a, (shape, dtype)) in enumerate(zip(arrays, expected)):
        if a.shape != shape or a.dtype != dtype:
            return f"array {k} is {a.dtype}{list(a.shape)}, the model's is {dtype}{list(shape)}"
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            return f"array {k} holds NaN or infinite values"
    return None


def _nbytes(record: Any) -> int:
    try:
        return int(record.count_bytes())
    except ValueError:  # Flower counts scalars only; SecAgg+ records hold lists of bytes
        items = [i for v in record.values() for i in (v if isinstance(v, list) else [v])]
        return sum(len(i) if isinstance(i, (bytes, str)) else 8 for i in items)


def run_rounds(grid: Any, context: Any, cfg: FedConfig, data: ClientData, test: tuple[np.ndarray, np.ndarray],
               out: Path, on_round: Any = None) -> None:
    """Run cfg.rounds rounds through `grid`; write global_weights.npz, rounds.json and, as it goes,
    progress.jsonl (one line a round) to `out`."""
    module = build_module(cfg, data)
    names = list(get_weights(module))
    initial = list(get_weights(module).values())
    grid = RecordingGrid(grid, out / "crossed.jsonl", None if cfg.secagg else initial, cfg.max_update_ratio)

    def evaluate(server_round: int, arrays: list[np.ndarray]) -> tuple[float, float]:
        set_weights(module, dict(zip(names, arrays)))
        acc, loss = accuracy(module, *test)
        grid.round = server_round + 1
        with open(out / "progress.jsonl", "a") as f:
            f.write(json.dumps({"round": server_round, "accuracy": acc, "loss": loss}) + "\n")
        if on_round is not None:
            on_round(server_round, acc, loss)
        return acc, loss

    runner = _secagg_rounds if cfg.secagg else _strategy_rounds
    final, evals, train = runner(grid, context, cfg, initial, evaluate)
    (out / "rounds.json").write_text(json.dumps({"evaluate": evals, "train": train, "config": asdict(cfg),
                                                 "dropped": grid.dropped}))
    if not all(np.isfinite(a).all() for a in final if np.issubdtype(np.asarray(a).dtype, np.floating)):
        raise FederatedError("the global model holds NaN or infinite weights after aggregation; not saved "
                             f"({len(grid.dropped)} client update(s) were dropped along the way)")
    np.savez(out / "global_weights.npz", **dict(zip(names, final)))


def _strategy_rounds(grid: Any, _context: Any, cfg: FedConfig, initial: list[np.ndarray], evaluate: Any) -> tuple[Any, Any, Any]:
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
    from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedProx, FedTrimmedAvg

    base = {"fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam, "fedmedian": FedMedian,
            "fedtrimmedavg": FedTrimmedAvg}[cfg.strategy]
    kw: dict[str, Any] = {"fraction_train": cfg.fraction, "fraction_evaluate": cfg.eval_fraction,
                          "min_train_nodes": cfg.clients_per_round, "min_evaluate_nodes": cfg.clients_evaluating,
                          "min_available_nodes": cfg.clients}
    if cfg.strategy == "fedprox":
        kw["proximal_mu"] = cfg.proximal_mu
    if cfg.strategy == "fedadam":
        kw.update(eta=0.01, eta_l=cfg.lr)
    if cfg.dp:
        kw["weighted_by_key"] = "unit-weight"
    strategy: Any = base(**kw)
    if cfg.dp:
        from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

        strategy = DifferentialPrivacyClientSideFixedClipping(strategy, noise_multiplier=cfg.dp_noise,
                                                              clipping_norm=cfg.dp_clip,
                                                              num_sampled_clients=cfg.clients_per_round)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        acc, loss = evaluate(server_round, arrays.to_numpy_ndarrays())
        return MetricRecord({"accuracy": acc, "loss": loss})

    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(numpy_ndarrays=initial), num_rounds=cfg.rounds,
                            timeout=cfg.round_timeout_s, evaluate_fn=evaluate_fn,
                            train_config=ConfigRecord({"local-epochs": cfg.local_epochs}))
    evals = {int(r): dict(m) for r, m in result.evaluate_metrics_serverapp.items()}
    for r, m in result.evaluate_metrics_clientapp.items():
        evals.setdefault(int(r), {}).update({"device_accuracy": m["accuracy"], "device_loss": m["loss"]})
    train = {int(r): dict(m) for r, m in result.train_metrics_clientapp.items()}
    return result.arrays.to_numpy_ndarrays(), evals, train


def _weighted_mean(key: str) -> Callable[[list[tuple[int, dict[str, Any]]]], dict[str, Any]]:
    """A workflow-API metrics aggregator: `key` averaged over (num_examples, metrics) pairs."""

    def aggregate(results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        n = sum(k for k, _ in results)
        return {key: sum(k * float(m[key]) for k, m in results) / max(1, n)}

    return aggregate


def _secagg_rounds(grid: Any, context: Any, cfg: FedConfig, initial: list[np.ndarray], evaluate: Any) -> tuple[Any, Any, Any]:
    """SecAgg+ runs on Flower's workflow API (DefaultWorkflow + SecAggPlusWorkflow, legacy strategies)."""
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg, FedProx
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

    base = FedProx if cfg.strategy == "fedprox" else FedAvg

    class UpdateAverage(base):  # type: ignore[misc, valid-type]
        """Clients send (new - global); the average of those plus the global model is FedAvg's result."""

        current: list[np.ndarray] = []

        def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
            self.current = parameters_to_ndarrays(parameters)
            pairs = super().configure_fit(server_round, parameters, client_manager)
            for _, ins in pairs:
                ins.config["server-round"] = server_round
            return pairs

        def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
            params, metrics = super().aggregate_fit(server_round, results, failures)
            if params is None:
                return None, metrics
            new = [(g + d).astype(g.dtype) for g, d in zip(self.current, parameters_to_ndarrays(params))]
            return ndarrays_to_parameters(new), metrics

    def evaluate_fn(server_round: int, arrays: list[np.ndarray], _config: Any) -> tuple[float, dict[str, Any]]:
        acc, loss = evaluate(server_round, arrays)
        return loss, {"accuracy": acc, "loss": loss}

    kw: dict[str, Any] = {"fraction_fit": cfg.fraction, "fraction_evaluate": cfg.eval_fraction,
                          "min_fit_clients": cfg.clients_per_round, "min_evaluate_clients": cfg.clients_evaluating,
                          "evaluate_metrics_aggregation_fn": _weighted_mean("accuracy"),
                          "min_available_clients": cfg.clients, "evaluate_fn": evaluate_fn,
                          "fit_metrics_aggregation_fn": _weighted_mean("train_loss"),
                          "initial_parameters": ndarrays_to_parameters(initial)}
    if cfg.strategy == "fedprox":
        kw["proximal_mu"] = cfg.proximal_mu
    strategy = UpdateAverage(**kw)
    context = LegacyContext(context, ServerConfig(num_rounds=cfg.rounds, round_timeout=cfg.round_timeout_s),
                            strategy)
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=1.0, reconstruction_threshold=cfg.secagg_threshold, clipping_range=cfg.secagg_clip,
        max_weight=cfg.secagg_max_weight, timeout=cfg.round_timeout_s))
    workflow(grid, context)
    final = context.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
    hist = context.history
    evals: dict[int, dict[str, float]] = {}
    for r, acc in hist.metrics_centralized.get("accuracy", []):
        evals.setdefault(int(r), {})["accuracy"] = float(acc)
    for r, loss in hist.losses_centralized:
        evals.setdefault(int(r), {})["loss"] = float(loss)
    for r, acc in hist.metrics_distributed.get("accuracy", []):
        evals.setdefault(int(r), {})["device_accuracy"] = float(acc)
    for r, loss in hist.losses_distributed:
        evals.setdefault(int(r), {})["device_loss"] = float(loss)
    train = {int(r): {"train_loss": float(v)} for r, v in hist.metrics_distributed_fit.get("train_loss", [])}
    return final, evals, train


def make_server_app(cfg: FedConfig, data: ClientData, test: tuple[np.ndarray, np.ndarray], out: Path,
                    on_round: Any = None) -> Any:
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_rounds(grid, context, cfg, data, test, out, on_round)

    return app
