"""Flower ServerApp and ClientApp for the zoo's models (NumPy/torch weights in ArrayRecords).

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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgewise.errors import EdgewiseError
from edgewise.federated.task import accuracy, get_weights, set_weights, train_local

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg")  # the last two resist outliers


@dataclass
class FedConfig:
    model: str = "cnn"
    width: float = 1.0
    data: str = "digits"
    clients: int = 10
    rounds: int = 10
    partition: str = "iid"
    strategy: str = "fedavg"
    fraction: float = 1.0  # clients sampled per round
    local_epochs: int = 2
    lr: float = 0.05
    mode: str = "full"  # or "last": clients train only the classifier head
    proximal_mu: float = 0.01  # FedProx only
    seed: int = 0
    round_timeout_s: float = 300.0
    fail_clients: list[int] = field(default_factory=list)  # chaos: these partitions crash from round 2 on
    poison_clients: list[int] = field(default_factory=list)  # chaos: these send garbage weights (simulation)
    dp_clip: float = 0.0  # > 0: clients clip their update to this L2 norm (Flower's fixedclipping_mod) ...
    dp_noise: float = 0.0  # ... and the server adds Gaussian noise (multiplier z) to the unweighted average
    dp_delta: float = 1e-5
    eval_fraction: float = 0.0  # > 0: this share of clients also scores each round's model on its own samples
    holdout: float = 0.2  # ... on this newest share of its samples, which it then never trains on
    secagg: bool = False  # SecAgg+: the server learns only the sum of the clients' masked updates
    secagg_threshold: float = 0.5  # share of a client's key shares needed to unmask it if it drops out
    secagg_clip: float = 8.0  # quantizer range for each (weighted) update value: [-clip, clip]
    secagg_max_weight: float = 1000.0  # largest num-examples a client's update is weighted by
    # A client's update (its weights minus the round's global weights) larger than this many times the
    # round's median update norm is dropped and counted, as are non-finite or wrong-shaped ones. 0 = no
    # norm bound (finite values and shapes are always checked). Not applied under SecAgg+: the server
    # never sees one client's update there.
    max_update_ratio: float = 5.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise EdgewiseError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if not 0 < self.fraction <= 1:
            raise EdgewiseError("fraction of clients per round must be in (0, 1]")
        if not 0 <= self.eval_fraction <= 1 or not 0 < self.holdout < 1:
            raise EdgewiseError("eval fraction must be in [0, 1] and the holdout share in (0, 1)")
        if self.dp_noise > 0 and self.dp_clip <= 0:
            raise EdgewiseError("DP noise needs a clipping norm (--dp-clip)")
        if self.secagg:
            if self.strategy not in ("fedavg", "fedprox"):
                raise EdgewiseError("SecAgg+ is built here for the averaging strategies (fedavg, fedprox), "
                                    f"not {self.strategy}: the server sees only the sum, so it cannot take "
                                    "a median or trim outliers")
            if self.dp:
                raise EdgewiseError("SecAgg+ together with DP is not supported yet: choose one")
            if int(self.clients * self.fraction) < 3:
                raise EdgewiseError("SecAgg+ needs at least 3 clients a round (each key is split in shares)")
            if not 0 < self.secagg_threshold <= 1:
                raise EdgewiseError("the SecAgg+ reconstruction threshold is a share in (0, 1]")

    @property
    def dp(self) -> bool:
        return self.dp_clip > 0

    @property
    def clients_per_round(self) -> int:
        return max(1, int(self.clients * self.fraction))

    @property
    def clients_evaluating(self) -> int:
        return max(1, int(self.clients * self.eval_fraction)) if self.eval_fraction > 0 else 0

    def to_run_config(self) -> dict[str, Any]:
        """Flower's run config (flat, hyphenated, scalar values): how the deployment engine carries it."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self) if f.name not in CHAOS}

    @classmethod
    def from_run_config(cls, rc: dict[str, Any]) -> FedConfig:
        kw: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key in rc and f.name not in CHAOS:
                default = getattr(cls(), f.name)
                kw[f.name] = type(default)(rc[key])
        return cls(**kw)


class FederatedError(EdgewiseError):
    """A federated run could not produce a sound model (or was set up wrongly)."""


CHAOS = ("fail_clients", "poison_clients")  # test-only fields: never part of a deployed run's config


@dataclass
class ClientData:
    x: list[np.ndarray]
    y: list[np.ndarray]
    shape: tuple[int, ...]
    classes: int


def build_module(cfg: FedConfig, data: ClientData) -> Any:
    import torch

    from edgewise.zoo import build

    torch.manual_seed(cfg.seed)
    return build(cfg.model, data.shape, data.classes, cfg.width)


# --------------------------------------------------------------------------------------------- client

ConfigFn = Callable[[Any], FedConfig]  # Flower Context -> the run's configuration
# -> (index of this node's share in data.x/y, data, 0 <= salt < 100 that makes its local shuffles its own)
DataFn = Callable[[Any, FedConfig], tuple[int, ClientData, int]]


def local_split(cfg: FedConfig, x: np.ndarray, y: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray],
                                                                         tuple[np.ndarray, np.ndarray]]:
    """(train, held out) for one client. With federated evaluation on, the newest `holdout` share of a
    client's samples (at least one, when it has 5 or more) is kept out of training to score the global
    model on; otherwise everything trains."""
    n_val = max(1, int(len(y) * cfg.holdout)) if cfg.eval_fraction > 0 and len(y) >= 5 else 0
    cut = len(y) - n_val
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def _privacy_mods(get_cfg: ConfigFn) -> Any:
    """One mod that applies the run's privacy mods: the configuration is known only per run (deployment
    engine), while a ClientApp's mods are fixed when it is built."""

    def mod(msg: Any, ctx: Any, call_next: Any) -> Any:
        cfg = get_cfg(ctx)
        chain = call_next
        if cfg.dp:
            from flwr.clientapp.mod import fixedclipping_mod  # clips (new - global) before it leaves

            chain = _bind(fixedclipping_mod, chain)
        if cfg.secagg:
            from flwr.client.mod import secaggplus_mod

            chain = _bind(secaggplus_mod, chain)
        return chain(msg, ctx)

    return mod


def _bind(mod: Any, nxt: Any) -> Any:
    return lambda msg, ctx: mod(msg, ctx, nxt)


def make_client_app(get_cfg: ConfigFn, get_data: DataFn) -> Any:
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.common import Code, EvaluateRes, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    app = ClientApp(mods=[_privacy_mods(get_cfg)])
    legacy_ins = {"fitins": compat.recorddict_to_fitins, "evaluateins": compat.recorddict_to_evaluateins}

    def received(msg: Message, ins: str, cfg: FedConfig,
                 data: ClientData) -> tuple[Any, list[np.ndarray], Any, bool]:
        """The global model (as arrays and loaded into a module), the config, and whether the message speaks
        the workflow API's FitIns/EvaluateIns format (SecAgg+ does) rather than the Message API's records."""
        legacy = f"{ins}.parameters" in msg.content.array_records
        if legacy:
            legacy_msg = legacy_ins[ins](msg.content, True)
            arrays, config = parameters_to_ndarrays(legacy_msg.parameters), legacy_msg.config
        else:
            arrays = msg.content["arrays"].to_numpy_ndarrays()
            config = msg.content["config"] if "config" in msg.content else {}
        module = build_module(cfg, data)
        set_weights(module, dict(zip(get_weights(module), arrays)))
        return module, arrays, config, legacy

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = get_cfg(context)
        pid, data, salt = get_data(context, cfg)
        module, arrays, config, legacy = received(msg, "fitins", cfg, data)
        round_ = int(config.get("server-round", 0))
        if pid in cfg.fail_clients and round_ >= 2:
            raise RuntimeError(f"client {pid} crashed (chaos)")
        (x, y), _ = local_split(cfg, data.x[pid], data.y[pid])
        loss = train_local(module, x, y, cfg.local_epochs, cfg.lr, mode=cfg.mode,
                           proximal_mu=float(config.get("proximal-mu", 0.0)),
                           seed=cfg.seed * 1000 + round_ * 100 + salt)
        new = list(get_weights(module).values())
        if pid in cfg.poison_clients:  # a faulty or malicious client: weights far from anything trained
            rng = np.random.default_rng(round_ * 1000 + pid)
            new = [(w + rng.normal(0, 10, w.shape)).astype(w.dtype) for w in new]
        # What leaves the client: the new weights (or, under SecAgg+, the masked update) and two numbers.
        if legacy:
            update = [(n - a).astype(np.float64) for n, a in zip(new, arrays)]
            res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update), len(y), {"train_loss": loss})
            return Message(content=compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)
        metrics = {"train_loss": loss, "num-examples": len(y)}
        if cfg.dp:  # DP averages clipped updates unweighted: its sensitivity bound assumes equal weights
            metrics["unit-weight"] = 1.0
        content = RecordDict({"arrays": ArrayRecord(numpy_ndarrays=new), "metrics": MetricRecord(metrics)})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Score the global model on this client's held-out samples; only the scores leave."""
        cfg = get_cfg(context)
        pid, data, _ = get_data(context, cfg)
        _, (x, y) = local_split(cfg, data.x[pid], data.y[pid])
        if len(y) == 0:
            raise RuntimeError("this client holds too few samples (< 5) to keep any out for evaluation")
        module, _, _, legacy = received(msg, "evaluateins", cfg, data)
        acc, loss = accuracy(module, x, y)
        if legacy:
            res = EvaluateRes(Status(Code.OK, ""), loss, len(y), {"accuracy": acc})
            return Message(content=compat.evaluateres_to_recorddict(res), reply_to=msg)
        return Message(content=RecordDict({"metrics": MetricRecord({"accuracy": acc, "loss": loss,
                                                                    "num-examples": len(y)})}), reply_to=msg)

    return app


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
