"""The `edgewise` command: a thin shell over the Python API, one module per group of verbs (model, bundle +
keys + targets, agent + device + cascade, fleet, federate). Each verb parses, calls one library function,
and prints."""

from __future__ import annotations

import os
import sys

from edgewise.cli import model  # noqa: F401 - registers train, optimize, bench, compile, import, quickstart
from edgewise.cli.agent import agent_app, cascade_app, device_app
from edgewise.cli.app import app, reflow_help
from edgewise.cli.bundle import bundle_app, keys_app, targets_app
from edgewise.cli.common import console
from edgewise.cli.federate import federate_app
from edgewise.cli.fleet import fleet_app
from edgewise.errors import EdgewiseError

app.add_typer(bundle_app, name="bundle")
app.add_typer(targets_app, name="targets")
app.add_typer(keys_app, name="keys")
app.add_typer(agent_app, name="agent")
app.add_typer(cascade_app, name="cascade")
app.add_typer(fleet_app, name="fleet")
app.add_typer(device_app, name="device")
app.add_typer(federate_app, name="federate")
reflow_help(app)


def main() -> None:
    """Entry point: every EdgewiseError becomes one line on stderr and exit code 1, never a traceback."""
    try:
        app(prog_name="edgewise")
    except EdgewiseError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("interrupted; nothing was left half-written")
        sys.exit(130)
    except OSError as e:  # a full or read-only disk, a path that is a file where a directory is due, ...
        where = f" {e.filename}" if e.filename else ""
        console.print(f"[bold red]error:[/] cannot use{where}: {e.strerror or e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except Exception as e:  # a bug, not bad input: still one line, with a way to see the traceback
        if os.environ.get("EDGEWISE_DEBUG"):
            raise
        console.print(f"[bold red]error:[/] internal error ({type(e).__name__}: {e}); "
                      "rerun with EDGEWISE_DEBUG=1 for the traceback and please report it", highlight=False)
        sys.exit(2)


__all__ = ["app", "main"]
