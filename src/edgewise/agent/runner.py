"""Wire an agent together from its config: model manager, queue, sync, cascade, HTTP service."""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edgewise.agent.forward.audit import AuditingUpstream, AuditLog
from edgewise.agent.forward.queue import DurableQueue, GroupCommitter
from edgewise.agent.forward.receiver import EventStore
from edgewise.agent.forward.sync import Syncer
from edgewise.agent.forward.upstream import HttpUpstream
from edgewise.agent.serve.cascade import CascadeConfig, Inference, PrivacyPolicy
from edgewise.agent.serve.models import ModelManager
from edgewise.errors import AgentError
from edgewise.httplimits import HEADER_TIMEOUT_S, IDLE_TIMEOUT_S


@dataclass
class AgentConfig:
    bundles: list[Path] = field(default_factory=list)
    tier: str = "server"
    data_dir: Path = Path("agent-data")
    upstream: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    threads: int | None = None  # None: as each bundle was measured (manifest.runtime.threads), else 1
    runtime: str = "onnxruntime"  # or "c": run the bundle's generated C through ctypes (endpoint tier)
    model_budget_bytes: int = 512 * 2**20
    model_policy: str = "evict-lru"
    queue_max_bytes: int = 256 * 2**20
    queue_max_age_s: float = 7 * 86400
    queue_when_full: str = "drop-oldest"
    default_threshold: float = 0.9
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    mqtt: str | None = None  # host:port of a broker: readings in, results out (QoS 1, persistent session)
    mqtt_prefix: str | None = None  # default edgewise/<tier>
    mqtt_client_id: str | None = None  # default edgewise-<tier>-<port>
    fleet_poll_s: float = 0.0  # > 0: poll the fleet for updates (needs `edgewise device enroll` first)
    trust: list[Path] = field(default_factory=list)  # release public keys bundles must be signed with
    escalate: str = "none"  # none | raw | features
    features_at: str | None = None  # features mode: tensor to send (default: the penultimate embedding)
    samples_max_mb: float = 64.0  # labelled samples kept for federated training (POST /v1/samples); 0 = off
    review_offline: bool = True
    send_results: bool = True
    streams: list[str] = field(default_factory=list)  # NAME=SOURCE: video files, rtsp:// URLs, /dev/videoN
    stream_fps: float = 5.0
    stream_model: str | None = None  # default: the only model served
    idle_timeout_s: float = IDLE_TIMEOUT_S  # a connection with no request in flight is closed after this
    header_timeout_s: float = HEADER_TIMEOUT_S  # a request's headers must arrive within this (slowloris)
    allow_bench: bool = False  # POST /v1/bench/*: the build host measures candidates here (unsigned models)

    @classmethod
    def from_toml(cls, path: Path, **overrides: Any) -> AgentConfig:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise AgentError(f"cannot read agent config {path}: {e}") from e
        flat: dict[str, Any] = {}
        for section in ("privacy", "cascade", "queue", "models"):
            flat.update(data.pop(section, {}))
        flat.update(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(flat) - known)
        if unknown:
            raise AgentError(f"{path}: unknown agent settings {', '.join(unknown)}")
        flat.update({k: v for k, v in overrides.items() if v is not None})
        if "bundles" in flat:
            flat["bundles"] = [Path(b) for b in flat["bundles"]]
        if "trust" in flat:
            flat["trust"] = [Path(t) for t in flat["trust"]]
        if "data_dir" in flat:
            flat["data_dir"] = Path(flat["data_dir"])
        return cls(**flat)


@dataclass
class Agent:
    config: AgentConfig
    app: Any
    inference: Inference | None
    queue: DurableQueue | None
    committer: GroupCommitter | None
    syncer: Syncer | None
    events: EventStore | None
    audit: AuditLog
    mqtt: Any = None
    updater: Any = None
    streams: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for s in self.streams:
            s.stop()
        if self.updater is not None:
            self.updater.stop()
        if self.mqtt is not None:
            self.mqtt.stop()
        if self.syncer is not None:
            self.syncer.stop()
        if self.committer is not None:
            self.committer.close()


def build_agent(cfg: AgentConfig) -> Agent:
    from edgewise.agent.serve.service import create_app

    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    audit = AuditLog(cfg.data_dir / "audit.db")
    models = ModelManager(cfg.model_budget_bytes, cfg.model_policy, cfg.threads, runtime=cfg.runtime,
                          build_dir=cfg.data_dir / "c-build", features=cfg.escalate == "features",
                          features_at=cfg.features_at, trust=cfg.trust)
    for b in cfg.bundles:
        models.register(Path(b))
    updater = None
    if cfg.fleet_poll_s > 0:
        from edgewise.agent.ota.thread import OtaThread

        # serves the active slot; with --mqtt, fleet notifications wake it between polls
        updater = OtaThread(cfg.data_dir / "ota", cfg.trust, models, cfg.fleet_poll_s, cfg.mqtt)
    queue = committer = syncer = upstream = None
    if cfg.upstream:
        upstream = AuditingUpstream(HttpUpstream(cfg.upstream), audit, cfg.upstream)
        queue = DurableQueue(cfg.data_dir / "queue.db", cfg.queue_max_bytes, cfg.queue_max_age_s, cfg.queue_when_full)
        committer = GroupCommitter(queue)
        syncer = Syncer(queue, upstream).start()
        committer.on_commit.append(syncer.notify)
    events = EventStore(cfg.data_dir / "events.db") if cfg.tier != "endpoint" else None
    inference = None
    if models.names or updater is not None:
        inference = Inference(models, CascadeConfig(cfg.tier, cfg.default_threshold, cfg.thresholds),
                              PrivacyPolicy(cfg.escalate, cfg.review_offline, cfg.send_results), committer, upstream)
    bridge = None
    if cfg.mqtt:
        if inference is None:
            raise AgentError("MQTT ingestion needs at least one --bundle to answer with")
        from edgewise.agent.serve.mqtt import MqttBridge
        from edgewise.hostport import parse_hostport

        host, port = parse_hostport(cfg.mqtt, "--mqtt", AgentError)
        bridge = MqttBridge(inference, host, port, cfg.mqtt_client_id or f"edgewise-{cfg.tier}-{cfg.port}",
                            cfg.mqtt_prefix or f"edgewise/{cfg.tier}").start()
    samples = None
    if cfg.samples_max_mb > 0:
        from edgewise.agent.samples import FILENAME, SampleStore

        samples = SampleStore(cfg.data_dir / FILENAME, int(cfg.samples_max_mb * 2**20))
    streams = []
    if cfg.streams:
        from edgewise.agent.serve.streams import Stream, parse_stream

        if inference is None:
            raise AgentError("--stream needs a --bundle to answer with")
        model = cfg.stream_model or (models.names[0] if len(models.names) == 1 else None)
        if model is None:
            raise AgentError(f"several models are served; name the one for the streams with --stream-model "
                             f"({', '.join(models.names)})")
        specs = [parse_stream(s) for s in cfg.streams]
        if len({n for n, _ in specs}) != len(specs):
            raise AgentError("stream names must differ")
        streams = [Stream(n, src, model, inference, committer, cfg.stream_fps) for n, src in specs]
    bench = None
    if cfg.allow_bench:
        from edgewise.agent.serve.benchsvc import BenchSessions

        bench = BenchSessions()
        logging.getLogger("edgewise.agent").warning(
            "--allow-bench: this agent runs unsigned models it is sent (for a device on the bench only)")
    app = create_app(events, syncer, queue, cfg.tier, inference, bridge, updater, samples, streams, bench)
    if updater is not None:
        updater.start()
    for s in streams:
        s.start()
    return Agent(cfg, app, inference, queue, committer, syncer, events, audit, bridge, updater, streams)


def serve(cfg: AgentConfig) -> None:
    from edgewise.httplimits import serve_http

    if min(cfg.idle_timeout_s, cfg.header_timeout_s) <= 0:
        raise AgentError("idle_timeout_s and header_timeout_s must be positive seconds")
    agent = build_agent(cfg)
    try:
        serve_http(agent.app, cfg.host, cfg.port, idle_timeout_s=cfg.idle_timeout_s,
                   header_timeout_s=cfg.header_timeout_s)
    finally:
        agent.close()
