"""The `edgewise` Typer application every group of verbs registers on."""

from __future__ import annotations

import typer

app = typer.Typer(help="edgewise: train, optimize, benchmark and package AI models for edge devices.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def reflow(doc: str | None) -> str | None:
    """A docstring as help that wraps to the terminal: Typer's rich help keeps each line break of a
    paragraph, so a docstring wrapped at 120 columns breaks mid-sentence at 80. Lines of a paragraph are
    joined; an `Example:` line, or a line that is indented or starts a list item, keeps its own line."""
    if not doc:
        return doc
    import inspect

    paragraphs = []
    for para in inspect.cleandoc(doc).split("\n\n"):
        out: list[str] = []
        for line in para.splitlines():
            own = line.startswith(("Example", " ", "-", "*", "\b")) or not out
            if own:
                out.append(line)
            else:
                out[-1] += " " + line.strip()
        paragraphs.append("\n".join(out))
    return "\n\n".join(paragraphs)


def reflow_help(typer_app: typer.Typer) -> None:
    """`reflow` every command's docstring in `typer_app` and the groups under it (before it first runs)."""
    infos = [*typer_app.registered_commands, typer_app.registered_callback]
    for info in infos:
        if info is not None and info.callback is not None and info.help is None:
            info.callback.__doc__ = reflow(info.callback.__doc__)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            reflow_help(group.typer_instance)
