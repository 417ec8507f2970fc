"""The `edgewise` Typer application every group of verbs registers on."""

from __future__ import annotations

import typer

app = typer.Typer(help="edgewise: train, optimize, benchmark and package AI models for edge devices.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
