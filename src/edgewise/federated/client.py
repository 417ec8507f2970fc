"""The ClientApp: local training (and evaluation on held-out samples) on whatever data the engine hands
it, with the privacy mods the run asks for (DP clipping, SecAgg+)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from edgewise.federated.config import ClientData, FedConfig, build_module
from edgewise.federated.task import accuracy, get_weights, set_weights, train_local

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


