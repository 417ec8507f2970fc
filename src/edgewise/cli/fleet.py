"""Verbs of the fleet server and its admin API: serve, upload, enrolment tokens, devices, rollouts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgewise.cli.common import Server, Token, _client, out
from edgewise.errors import EdgewiseError

fleet_app = typer.Typer(help="The fleet server and its admin API: registry, devices, rollouts.", no_args_is_help=True)


@fleet_app.command("serve")
def fleet_serve(
    data_dir: Annotated[Path, typer.Option(help="bundles, the fleet key and (by default) the SQLite database")] = Path("fleet-data"),
    db: Annotated[str | None, typer.Option(help="sqlite path or postgresql://user@host/db (default: DATA_DIR/fleet.db)")] = None,
    trust: Annotated[list[Path] | None, typer.Option(help="release public key(s) the registry accepts signatures from")] = None,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port")] = 8700,
    assignment_ttl: Annotated[float, typer.Option(help="seconds before assignment metadata expires")] = 3600.0,
    mqtt: Annotated[str | None, typer.Option(help="MQTT broker HOST:PORT: notify devices of new assignments")] = None,
    notify_tag_min: Annotated[int, typer.Option(min=1, help="a rollout wave of at least this many devices is "
                                                             "announced once on edgewise/fleet/tag/<tag> instead of "
                                                             "one message per device")] = 100,
    workers: Annotated[int, typer.Option(min=1, help="server processes sharing the port; > 1 needs --db "
                                                     "postgresql://... (all state lives there; a worker that dies "
                                                     "is replaced)")] = 1,
    bundle_url: Annotated[str | None, typer.Option(help="where devices fetch bundles: a file server's base URL "
                                                        "(nginx, a CDN) holding DATA_DIR/models/<sha256>.tar, or "
                                                        "a path like /bundles to serve them here as static files; "
                                                        "no credential is sent there (devices verify what they "
                                                        "get). Default: the authenticated device route")] = None,
) -> None:
    """Run the fleet server: admin API (/v1/admin), device API (/v1/device), web console at /.

    Example: edgewise fleet serve --data-dir /var/lib/edgewise-fleet --trust keys/release.pub --port 8700
    Example: edgewise fleet serve --db postgresql://fleet@db/fleet --workers 4 --host 0.0.0.0
    """
    from edgewise.fleet.server import ServerConfig, _admin_token, serve

    cfg = ServerConfig(data_dir=data_dir, db=db, trust=list(trust or []), assignment_ttl_s=assignment_ttl, mqtt=mqtt,
                       bundle_url=bundle_url, notify_tag_min=notify_tag_min)
    data_dir.mkdir(parents=True, exist_ok=True)
    where = "$EDGEWISE_ADMIN_TOKEN" if os.environ.get("EDGEWISE_ADMIN_TOKEN") else str(data_dir / "admin.token")
    _admin_token(cfg)
    out.print(f"edgewise fleet on http://{host}:{port} (console at /); admin token in {where}; "
              f"database {(db or str(data_dir / 'fleet.db')).split('@')[-1]}"
              + (f"; {workers} workers" if workers > 1 else ""))
    serve(cfg, host, port, workers)


@fleet_app.command("upload")
def fleet_upload(bundle: Annotated[Path, typer.Argument(help="signed bundle directory")], server: Server = "http://127.0.0.1:8700",
                 token: Token = "") -> None:
    """Upload a bundle to the registry (its signature status is checked and recorded).

    Example: edgewise fleet upload runs/cnn-mcu/bundle --server http://127.0.0.1:8700
    """
    m = _client(server, token).upload(bundle)
    out.print(f"uploaded {m['name']} {m['version']} ({m['size']:,} bytes), signature: {m['signature']}")


@fleet_app.command("enroll-token")
def fleet_enroll_token(tags: Annotated[list[str] | None, typer.Option("--tag", help="tag(s) the device gets")] = None,
                       server: Server = "http://127.0.0.1:8700", token: Token = "") -> None:
    """Make a one-time enrolment token for a device.

    Example: edgewise fleet enroll-token --tag cameras
    """
    out.print(_client(server, token).enroll_token(list(tags or [])))


@fleet_app.command("devices")
def fleet_devices(tag: Annotated[str | None, typer.Option(help="only devices with this tag")] = None,
                  server: Server = "http://127.0.0.1:8700", token: Token = "") -> None:
    """List enrolled devices with their model versions.

    Example: edgewise fleet devices --tag cameras
    """
    table = Table()
    for col in ("id", "name", "tags", "models", "last step"):
        table.add_column(col, overflow="fold" if col == "models" else "ellipsis")  # a model's name in full
    for d in _client(server, token).devices(tag):
        models = "\n".join(f"{m} {v}" for m, v in d["models"].items())  # one line per model
        table.add_row(d["id"][:12], d["name"], ", ".join(d["tags"]), models, d["state"] or "")
    out.print(table)


@fleet_app.command("rollout")
def fleet_rollout(
    model: Annotated[str, typer.Argument(help="model name")],
    version: Annotated[str, typer.Argument(help="version in the registry")],
    tag: Annotated[str, typer.Option("--tag", help="devices with this tag")],
    waves: Annotated[str, typer.Option(help="cumulative percentages")] = "1,10,50,100",
    max_failure_rate: Annotated[float, typer.Option(help="health gate: failed share allowed")] = 0.0,
    max_error_rate: Annotated[float, typer.Option(help="health gate: mean error rate allowed")] = 0.05,
    wave_timeout: Annotated[float, typer.Option(help="seconds before silent devices count as failed")] = 600.0,
    no_rollback: Annotated[bool, typer.Option("--no-rollback", help="halt only; do not roll back a failed wave")] = False,
    server: Server = "http://127.0.0.1:8700", token: Token = "",
) -> None:
    """Start a rollout in waves with health gates between them.

    Example: edgewise fleet rollout cnn 1.1.0 --tag cameras --waves 1,10,50,100
    """
    try:
        w = [float(x) for x in waves.split(",")]
    except ValueError as e:
        raise EdgewiseError(f"--waves must be comma-separated percentages, got {waves!r}") from e
    r = _client(server, token).rollout(model, version, tag, w, {"max_failure_rate": max_failure_rate,
                                                               "max_error_rate": max_error_rate,
                                                               "wave_timeout_s": wave_timeout}, not no_rollback)
    out.print(f"rollout {r['id']}: {model} {version} to {r['targeted']} device(s) tagged {tag}, state {r['state']}")


@fleet_app.command("rollouts")
def fleet_rollouts(server: Server = "http://127.0.0.1:8700", token: Token = "") -> None:
    """List rollouts with their state, wave and device counts.

    Example: edgewise fleet rollouts
    """
    table = Table()
    for col in ("id", "model", "version", "tag", "state", "wave", "devices", "reason"):
        table.add_column(col, overflow="fold")
    for r in _client(server, token).rollouts():
        table.add_row(r["id"], r["model"], r["version"], r["selector"], r["state"], f"{r['wave'] + 1}/{len(r['waves'])}",
                      ", ".join(f"{k} {v}" for k, v in r["devices"].items()), r["reason"])
    out.print(table)


@fleet_app.command("control")
def fleet_control(rollout_id: Annotated[str, typer.Argument(help="rollout id")],
                  action: Annotated[str, typer.Argument(help="pause, resume, abort or rollback")],
                  server: Server = "http://127.0.0.1:8700", token: Token = "") -> None:
    """Pause, resume, abort or roll back a rollout by hand.

    Example: edgewise fleet control 3f9a1c2b7d4e pause
    """
    r = _client(server, token).control(rollout_id, action)
    out.print(f"rollout {r['id']}: {r['state']}")
