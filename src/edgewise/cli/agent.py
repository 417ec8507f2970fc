"""Verbs of the device: the agent (and its audit log), the cascade's calibration, enrolment with a fleet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgewise.cli.common import Server, _pct, console, out, out_console
from edgewise.errors import EdgewiseError

agent_app = typer.Typer(help="Run the on-device agent (inference service, cascade, store-and-forward).",
                        invoke_without_command=True)


@agent_app.callback()
def agent(
    ctx: typer.Context,
    bundle: Annotated[list[Path] | None, typer.Option("--bundle", "-b", help="bundle to serve (repeatable)")] = None,
    tier: Annotated[str | None, typer.Option(help="endpoint, node or server")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="queue, received events and audit log live here")] = None,
    upstream: Annotated[str | None, typer.Option(help="URL of the tier above, e.g. http://127.0.0.1:8081")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (loopback unless --host says otherwise)")] = None,
    host: Annotated[str | None, typer.Option(help="address to bind")] = None,
    escalate: Annotated[str | None, typer.Option(help="privacy: what unsure samples send upstream: 'none' (default), "
                                                      "'raw' inputs, or 'features' (the model's embedding, to the "
                                                      "tier above's <model>-tail; see `bundle split`)")] = None,
    runtime: Annotated[str | None, typer.Option(help="'onnxruntime' (default) or 'c': run int8 bundles as the "
                                                     "generated C, through ctypes (needs gcc)")] = None,
    mqtt: Annotated[str | None, typer.Option(help="MQTT broker HOST:PORT: readings on edgewise/<tier>/in/<model>, "
                                                  "results on .../out/<model>")] = None,
    config: Annotated[Path | None, typer.Option(help="agent.toml: privacy, cascade, queue and models sections")] = None,
    fleet_poll: Annotated[float | None, typer.Option(help="poll the fleet for model updates every ~N seconds "
                                                          "(after `edgewise device enroll`)")] = None,
    trust: Annotated[list[Path] | None, typer.Option(help="release public key(s) OTA bundles must be signed with")] = None,
    samples_max_mb: Annotated[float | None, typer.Option(help="labelled samples kept for federated training "
                                                              "(POST /v1/samples), at most this many MB; 0 = off "
                                                              "[default: 64]")] = None,
    stream: Annotated[list[str] | None, typer.Option(help="NAME=SOURCE: a video file, rtsp:// URL or /dev/videoN "
                                                          "to answer frame by frame (repeatable); answers go "
                                                          "through the queue, frames never leave")] = None,
    fps: Annotated[float | None, typer.Option(help="frames a second each stream is sampled at [default: 5]")] = None,
    stream_model: Annotated[str | None, typer.Option(help="the model that answers the streams (default: the only "
                                                          "one served)")] = None,
    allow_bench: Annotated[bool, typer.Option("--allow-bench", help="let `optimize --measure-on` upload candidate "
                                                                   "models and time them here (POST /v1/bench/*): "
                                                                   "for a device on your bench, not in the field, "
                                                                   "since it runs unsigned models")] = False,
) -> None:
    """Serve bundles over HTTP (POST /predict, POST /v1/samples, GET /health, GET /metrics, docs at /docs).

    Example: edgewise agent --bundle runs/cnn-mcu/bundle --tier node --data-dir /var/lib/edgewise --port 8081
    Example: edgewise agent --tier server --host 0.0.0.0 --port 8090 --allow-bench   (a device to measure on)
    """
    if ctx.invoked_subcommand is not None:
        return
    from edgewise.agent.runner import AgentConfig, serve

    overrides = {"bundles": bundle or None, "tier": tier, "data_dir": data_dir, "upstream": upstream, "port": port,
                 "host": host, "escalate": escalate, "runtime": runtime, "mqtt": mqtt, "fleet_poll_s": fleet_poll,
                 "trust": trust or None, "samples_max_mb": samples_max_mb, "streams": stream or None,
                 "stream_fps": fps, "stream_model": stream_model, "allow_bench": allow_bench or None}
    if config is not None:
        cfg = AgentConfig.from_toml(config, **overrides)
    else:
        cfg = AgentConfig(**{k: v for k, v in overrides.items() if v is not None})
    if not cfg.bundles and cfg.tier != "server" and cfg.fleet_poll_s <= 0:
        raise EdgewiseError("an endpoint or node agent needs at least one --bundle (or --fleet-poll to get one)")
    console.print(f"edgewise agent ({cfg.tier}) on http://{cfg.host}:{cfg.port} serving "
                  f"{', '.join(str(b) for b in cfg.bundles) or 'no models'}; data in {cfg.data_dir}")
    serve(cfg)


@agent_app.command("audit")
def agent_audit(data_dir: Annotated[Path, typer.Option(help="the agent's data directory")] = Path("agent-data")) -> None:
    """Print what left the device: each upstream send with its fields, item count, bytes and destination.

    Example: edgewise agent audit --data-dir /var/lib/edgewise
    """
    from datetime import datetime

    from edgewise.agent.forward.audit import AuditLog

    if not (data_dir / "audit.db").is_file():
        raise EdgewiseError(f"no audit log in {data_dir}")
    table = Table(title=f"upstream sends recorded in {data_dir}")
    for col in ("time", "kind", "status", "destination", "fields", "items", "bytes"):
        table.add_column(col, overflow="fold")
    for r in AuditLog(data_dir / "audit.db").rows():
        status = r["status"] + (" (retry)" if r["retry"] else "")
        table.add_row(datetime.fromtimestamp(r["ts"]).isoformat(timespec="seconds"), r["kind"], status,
                      r["destination"], ", ".join(r["fields"]), str(r["items"]), f"{r['bytes']:,}")
    out_console.print(table)


cascade_app = typer.Typer(help="Plan the cascade across tiers.", no_args_is_help=True)


@cascade_app.command("calibrate")
def cascade_calibrate(
    bundle: Annotated[list[Path], typer.Option("--bundle", "-b", help="one bundle per tier, bottom (endpoint) first")],
    data: Annotated[str, typer.Option("--data", "-d", help="labelled data; thresholds come from its validation split")],
    out_dir: Annotated[Path, typer.Option(help="writes endpoint.toml / node.toml agent configs here")] = Path("cascade"),
    max_drop: Annotated[float, typer.Option(help="tolerated end-to-end accuracy drop vs the top tier, points")] = 0.5,
    escalate: Annotated[str, typer.Option(help="what the configs let unsure samples send upstream: 'none' (the "
                                               "privacy default: thresholds then only decide what is marked "
                                               "unsure), 'raw' or 'features'")] = "none",
) -> None:
    """Choose each tier's confidence threshold so the cascade forwards as little as possible while its
    accuracy stays within --max-drop of the top tier alone; write them into agent configs.

    Example: edgewise cascade calibrate -b runs/e/bundle -b runs/n/bundle -b runs/s/bundle --data digits
    """
    from edgewise.agent.serve.calibrate import calibrate_bundles, write_configs

    cal = calibrate_bundles(bundle, data, max_drop)
    table = Table(title=f"cascade on {data}: thresholds from validation, checked on the test split")
    for col in ("tier", "threshold", "answers (val)", "answers (test)", "accuracy of its answers (test)"):
        table.add_column(col)
    for t in cal.tiers:
        table.add_row(t["name"], "(answers the rest)" if t["threshold"] is None else f"{t['threshold']:.4f}",
                      f"{t['share_val'] * 100:.1f}%", f"{t['share_test'] * 100:.1f}%", _pct(t["accuracy_test"]))
    out_console.print(table)
    out_console.print(f"end-to-end accuracy: validation {cal.plan.accuracy * 100:.2f}% (top tier alone "
                      f"{cal.plan.top_accuracy * 100:.2f}%), test {cal.test_accuracy * 100:.2f}% (top tier alone "
                      f"{cal.top_test_accuracy * 100:.2f}%)")
    for path in write_configs(cal, bundle, data, out_dir, escalate):
        out_console.print(f"wrote {path}")


device_app = typer.Typer(help="The device side of the fleet: enrolment.", no_args_is_help=True)


@device_app.command("enroll")
def device_enroll(
    enroll_token: Annotated[str, typer.Option("--token", help="one-time token from `fleet enroll-token`")],
    data_dir: Annotated[Path, typer.Option(help="the agent's data directory")] = Path("agent-data"),
    name: Annotated[str, typer.Option(help="device name shown in the fleet")] = "",
    fleet_key: Annotated[Path | None, typer.Option(help="the fleet's public key, provisioned out of band (default: "
                                                     "fetched from the server at enrolment and pinned)")] = None,
    server: Server = "http://127.0.0.1:8700",
) -> None:
    """Enrol this device: trade the token for a device credential, kept in DATA_DIR/ota/device.json (0600).

    Example: edgewise device enroll --token XYZ --server http://fleet:8700 --data-dir /var/lib/edgewise
    """
    from edgewise.agent.ota.thread import enroll_device

    ident = enroll_device(server, enroll_token, data_dir, name, fleet_key)
    out.print(f"enrolled as {ident.device_id}; credential in {data_dir / 'ota' / 'device.json'}")
