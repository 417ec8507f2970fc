"""The fleet server's HTTP face: admin API, device API (separately authenticated), bundles with Range
downloads, a web console, and a ticker that judges waves whose devices went silent."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from edgewise import openapi_bodies as bodies
from edgewise import protocol
from edgewise.bundle.signing import TrustStore, generate_keys, load_private, public_pem
from edgewise.errors import FleetConflict, FleetError, FleetNotFound
from edgewise.fleet.db import Database
from edgewise.fleet.store import FleetStore
from edgewise.httplimits import Limit, Limiter

log = logging.getLogger("edgewise.fleet.server")


@dataclass
class ServerConfig:
    data_dir: Path = Path("fleet-data")
    db: str | None = None  # sqlite path or postgresql:// URL; default sqlite in data_dir
    trust: list[Path] = field(default_factory=list)  # release public keys whose signatures the registry accepts
    admin_token: str | None = None  # default: $EDGEWISE_ADMIN_TOKEN, else data_dir/admin.token (made once)
    assignment_ttl_s: float = 3600.0
    tick_s: float = 1.0
    mqtt: str | None = None  # HOST:PORT: devices are told on edgewise/fleet/<device_id> when to poll
    notify_tag_min: int = 100  # a wave this large is announced once on edgewise/fleet/tag/<tag>
    # Bundles off the device route: a file server's base URL (nginx, a CDN) holding DATA_DIR/models/<sha>.tar,
    # or a path ("/bundles") where this server serves them as static files (Range, ETag, If-None-Match).
    # Either way unauthenticated: a device verifies what it downloads (sha256 and signatures).
    bundle_url: str | None = None
    limits: dict[str, Limit] = field(default_factory=lambda: {
        "admin": Limit(200, 400, 1 << 30), "device": Limit(20, 60, 64 << 10),
        "enroll": Limit(500, 2000, 4 << 10),
        "download": Limit(5, 20, 4 << 10), "public": Limit(50, 100, 4 << 10),
        "static": Limit(2000, 5000, 4 << 10)})


def _admin_token(cfg: ServerConfig) -> str:
    if cfg.admin_token:
        return cfg.admin_token
    if os.environ.get("EDGEWISE_ADMIN_TOKEN"):
        return os.environ["EDGEWISE_ADMIN_TOKEN"]
    path = cfg.data_dir / "admin.token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def _classify(path: str) -> str:
    if path.startswith("/v1/admin"):
        return "admin"
    if path == protocol.ENROLL:
        return "enroll"
    if path.startswith(protocol.BUNDLES):
        return "download"
    if path.startswith("/v1/device"):
        return "device"
    return "public"


def _fleet_key(cfg: ServerConfig) -> Path:
    """The fleet's signing key, made on first start."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    if not (cfg.data_dir / "fleet.key").exists():
        generate_keys(cfg.data_dir, "fleet")
    return cfg.data_dir / "fleet.key"


def build_store(cfg: ServerConfig) -> FleetStore:
    key = _fleet_key(cfg)
    trust = TrustStore.load(cfg.trust) if cfg.trust else None
    db = Database(cfg.db or str(cfg.data_dir / "fleet.db"))
    store = FleetStore(db, cfg.data_dir, load_private(key), trust, cfg.assignment_ttl_s,
                       bundle_url=cfg.bundle_url)
    if cfg.mqtt:
        from edgewise.fleet.notify import MqttNotifier

        store.notify = MqttNotifier(cfg.mqtt, tag_min=cfg.notify_tag_min)
    return store


def create_app(cfg: ServerConfig, store: FleetStore | None = None) -> Any:
    store = store or build_store(cfg)
    token = _admin_token(cfg)
    app = FastAPI(title="edgewise fleet", version="0.1.0")
    def identify(auth: str) -> str | None:
        """Who a credential vouches for, for the rate limiter (checked once per header value)."""
        got = auth.removeprefix("Bearer ").strip()
        if hmac.compare_digest(got.encode(), token.encode()):
            return "admin"
        cred = protocol.parse_device_auth(got)
        return cred[0] if cred and store.authenticate(*cred) else None

    static = "/" + cfg.bundle_url.strip("/") if cfg.bundle_url and "://" not in cfg.bundle_url else None
    if static and static.startswith(("/v1/", "/health")) or static == "/":
        raise FleetError(f"--bundle-url {cfg.bundle_url} would hide the server's own routes; use e.g. /bundles")

    def classify(path: str) -> str:
        return "static" if static and path.startswith(static + "/") and "static" in cfg.limits else _classify(path)

    limiter = Limiter(cfg.limits, classify, identify)
    stop = threading.Event()

    def ticker() -> None:
        while not stop.wait(cfg.tick_s):
            try:
                store.tick_all()
            except Exception:  # a tick that fails is retried next time; serving goes on
                log.exception("fleet: rollout tick failed; retrying at the next tick")

    threading.Thread(target=ticker, name="rollout-ticker", daemon=True).start()
    app.state.store, app.state.stop, app.state.limiter = store, stop, limiter

    def admin(request: Request) -> str:
        got = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not got or not hmac.compare_digest(got.encode(), token.encode()):
            raise HTTPException(401, "admin token required (Authorization: Bearer <token>)")
        return request.headers.get("x-operator", "admin")[:100]

    def device(request: Request) -> str:
        cred = protocol.parse_device_auth(request.headers.get("authorization", ""))
        if cred is None or not store.authenticate(*cred):
            raise HTTPException(401, "device credential required (Authorization: Bearer <device_id>.<secret>)")
        return cred[0]

    @app.exception_handler(FleetError)
    async def fleet_error(_: Request, e: FleetError) -> JSONResponse:
        status = 404 if isinstance(e, FleetNotFound) else 409 if isinstance(e, FleetConflict) else 400
        return JSONResponse({"error": str(e)}, status_code=status)

    async def body_json(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, too deep, a 5000-digit number
            raise HTTPException(400, "body must be a JSON object") from e
        if not isinstance(data, dict):
            raise HTTPException(400, "body must be a JSON object")
        return data

    # ---- admin --------------------------------------------------------------------------------------
    @app.post("/v1/admin/models", openapi_extra=bodies.UPLOAD)
    async def upload(request: Request, who: str = Depends(admin)) -> dict[str, Any]:
        """Upload a bundle archive (tar, as `edgewise fleet upload` makes; tar.gz is read too)."""
        return await run_in_threadpool(store.add_model, await request.body(), who)

    @app.get("/v1/admin/models")
    def models(_: str = Depends(admin)) -> list[dict[str, Any]]:
        return store.models()

    @app.post("/v1/admin/enroll-tokens", openapi_extra=bodies.ENROLL_TOKENS)
    async def enroll_token(request: Request, _: str = Depends(admin)) -> dict[str, Any]:
        """One token, or `count` of them (a production line provisioning a batch)."""
        data = await body_json(request)
        tags, ttl, count = data.get("tags", []), data.get("ttl_s", 86400), data.get("count", 1)
        if not isinstance(tags, list) or not all(isinstance(t, str) and len(t) <= 100 for t in tags):
            raise HTTPException(400, "tags must be a list of strings")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 1 <= ttl <= 10 * 365 * 86400:
            raise HTTPException(400, "ttl_s must be a number of seconds from 1 to ten years")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10000:
            raise HTTPException(400, "count must be 1..10000")
        tokens = [store.enroll_token(tags, float(ttl)) for _ in range(count)]
        return {"token": tokens[0], "tokens": tokens}

    @app.get("/v1/admin/devices")
    def devices(tag: str | None = None, _: str = Depends(admin)) -> list[dict[str, Any]]:
        return store.devices(tag)

    @app.put("/v1/admin/devices/{device_id}/tags", openapi_extra=bodies.TAGS)
    async def tags(device_id: str, request: Request, _: str = Depends(admin)) -> dict[str, str]:
        tags = (await body_json(request)).get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) and len(t) <= 100 for t in tags):
            raise HTTPException(400, "tags must be a list of strings")
        store.set_tags(device_id, tags)
        return {"device": device_id}

    @app.get("/v1/admin/devices/{device_id}/timeline")
    def timeline(device_id: str, _: str = Depends(admin)) -> list[dict[str, Any]]:
        return store.timeline(device_id)

    @app.post("/v1/admin/rollouts", openapi_extra=bodies.ROLLOUT)
    async def create_rollout(request: Request, who: str = Depends(admin)) -> dict[str, Any]:
        d = await body_json(request)
        try:
            return store.create_rollout(str(d["model"]), str(d["version"]), str(d.get("selector", "all")),
                                        [float(w) for w in d.get("waves", [1, 10, 50, 100])], d.get("gate"),
                                        bool(d.get("auto_rollback", True)), who)
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise HTTPException(400, f"rollout needs model, version, selector, waves: {e}") from e

    @app.get("/v1/admin/rollouts")
    def rollouts(_: str = Depends(admin)) -> list[dict[str, Any]]:
        return store.rollouts()

    @app.get("/v1/admin/rollouts/{rid}")
    def rollout(rid: str, _: str = Depends(admin)) -> dict[str, Any]:
        return store.rollout(rid)

    @app.post("/v1/admin/rollouts/{rid}/{action}")
    def control(rid: str, action: str, who: str = Depends(admin)) -> dict[str, Any]:
        return store.control(rid, action, f"{action} by {who}")

    # ---- devices ------------------------------------------------------------------------------------
    @app.post(protocol.ENROLL, openapi_extra=bodies.ENROLL)
    async def enroll(request: Request) -> dict[str, str]:
        d = await body_json(request)
        if not isinstance(d.get("token"), str) or not isinstance(d.get("name", ""), str):
            raise HTTPException(400, "enrolment needs a token (a string) and optionally a name")
        try:
            return store.enroll(str(d["token"]), str(d.get("name", "")))
        except FleetError as e:
            raise HTTPException(403, str(e)) from e
        except KeyError as e:
            raise HTTPException(400, "enrolment needs a token") from e

    @app.get(protocol.ASSIGNMENT)
    def assignment(request: Request, device_id: str = Depends(device)) -> dict[str, Any]:
        return store.assignment(device_id, str(request.base_url).rstrip("/"))

    @app.get(protocol.BUNDLES + "{sha}")
    def bundle(sha: str, device_id: str = Depends(device)) -> Response:
        """Only a bundle this device is assigned (Range requests resume a broken download)."""
        resp = FileResponse(store.assigned_bundle(device_id, sha), media_type="application/x-tar")
        resp.chunk_size = 1 << 20  # 64 KB chunks cost a thread hop each: 16x fewer for 5 MB bundles
        return resp

    @app.post(protocol.REPORT, openapi_extra=bodies.REPORT)
    async def report(request: Request, device_id: str = Depends(device)) -> dict[str, bool]:
        await run_in_threadpool(store.report, device_id, await body_json(request))
        return {"ok": True}

    # ---- public -------------------------------------------------------------------------------------
    @app.get(protocol.FLEET_KEY)
    def fleet_pub() -> Response:
        return Response(public_pem(store.fleet_key.public_key()), media_type="application/x-pem-file")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "db": store.db.kind, "db_connections": store.db.connections, "pid": os.getpid(),
                "refused": limiter.refused, "latency": limiter.latency(),
                "notifications": getattr(store.notify, "sent", None),
                "tag_notifications": getattr(store.notify, "sent_tags", None)}

    @app.get("/", response_class=HTMLResponse)
    def console() -> str:
        return resources.files("edgewise.fleet").joinpath("console.html").read_text()

    @app.on_event("shutdown")
    def _stop() -> None:
        stop.set()

    if static:  # content-addressed archives: Range for resumes, ETag and If-None-Match from Starlette
        from starlette.staticfiles import StaticFiles

        class Bundles(StaticFiles):
            def file_response(self, *args: Any, **kwargs: Any) -> Response:
                resp = super().file_response(*args, **kwargs)
                resp.chunk_size = 1 << 20  # as the device route: 64 KB chunks cost a thread hop each
                return resp

        (cfg.data_dir / "models").mkdir(parents=True, exist_ok=True)
        app.mount(static, Bundles(directory=str(cfg.data_dir / "models")), name="bundles")
    return limiter.middleware(app)


def serve(cfg: ServerConfig, host: str = "127.0.0.1", port: int = 8700, workers: int = 1) -> None:
    """Serve the fleet. `workers` > 1: that many server processes share one listening socket and one
    PostgreSQL database (all state lives there); a worker that dies is replaced, and the others keep
    serving meanwhile."""
    from edgewise.httplimits import serve_http

    if workers <= 1:
        serve_http(create_app(cfg), host, port)
        return
    if not (cfg.db or "").startswith(("postgresql://", "postgres://")):
        raise FleetError("--workers > 1 needs a database the workers share: --db postgresql://... "
                         "(SQLite serves one process)")
    # what every worker would otherwise race to create: the fleet key, the admin token, the tables
    _fleet_key(cfg)
    _admin_token(cfg)
    Database(cfg.db).close()  # type: ignore[arg-type]
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise FleetError(f"cannot listen on {host}:{port}: {e.strerror}") from e
    sock.listen(2048)
    Supervisor(lambda: serve_http(create_app(cfg), host, port, sock=sock), workers).run()


class Supervisor:
    """Pre-forked workers: each runs `target` in its own process; one that exits is started again until
    the supervisor itself is told to stop (SIGTERM or SIGINT), when every worker is stopped too."""

    def __init__(self, target: Any, workers: int) -> None:
        self.target, self.workers = target, workers
        self.children: dict[int, int] = {}  # pid -> worker number
        self.stopping = False

    def _spawn(self, n: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                self.target()
            except BaseException:  # noqa: BLE001 - reported, then the supervisor starts another
                log.exception("fleet worker %d failed", n)
                code = 1
            finally:
                os._exit(code)
        self.children[pid] = n

    def _stop(self, *_: Any) -> None:
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for n in range(self.workers):
            self._spawn(n)
        log.info("fleet: %d workers (pids %s)", self.workers, ", ".join(map(str, self.children)))
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            n = self.children.pop(pid, None)
            if n is not None and not self.stopping:
                log.warning("fleet worker %d (pid %d) exited (status %d); starting another", n, pid, status)
                time.sleep(0.2)  # a worker that cannot start must not spin
                self._spawn(n)
