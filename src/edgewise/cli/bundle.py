"""Verbs for bundles, signing keys and target profiles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgewise.cli.common import _kb, out, out_console
from edgewise.errors import EdgewiseError

bundle_app = typer.Typer(help="Inspect, verify, sign and split bundles (model.onnx + manifest.json).", no_args_is_help=True)


targets_app = typer.Typer(help="List and show device target profiles.", no_args_is_help=True)


@bundle_app.command("verify")
def bundle_verify(
    path: Annotated[Path, typer.Argument(help="bundle directory")],
    key: Annotated[list[Path] | None, typer.Option("--key", "-k", help="trusted public key (.pub) or a directory "
                                                                       "of them; repeatable. Checks the signature")] = None,
) -> None:
    """Check every file's size and sha256 against the manifest, and with --key the Ed25519 signature
    (non-zero exit and the reason on any mismatch).

    Example: edgewise bundle verify runs/cnn-mcu/bundle --key keys/release.pub
    """
    from edgewise.bundle import verify_bundle

    if key:
        from edgewise.bundle.signing import TrustStore, verify_signed_bundle

        man, kid = verify_signed_bundle(path, TrustStore.load(key))
        out_console.print(f"[green]ok[/] {man.name} {man.version} for {man.target}: {len(man.files)} file(s) "
                          f"verified, signed by key {kid}")
        return
    man = verify_bundle(path)
    signed = (path / "signature").exists()
    out_console.print(f"[green]ok[/] {man.name} {man.version} for {man.target}: {len(man.files)} file(s) verified; "
                      + ("signature NOT checked (pass --key to check it)" if signed else "not signed"))


@bundle_app.command("sign")
def bundle_sign(
    path: Annotated[Path, typer.Argument(help="bundle directory")],
    key: Annotated[Path, typer.Option("--key", "-k", help="Ed25519 private key (from `edgewise keys gen`)")],
    golden: Annotated[int, typer.Option(help="golden input/output pairs to add for the device self-test")] = 4,
) -> None:
    """Add golden self-test pairs (if missing), then sign the canonical manifest bytes with Ed25519.

    Example: edgewise bundle sign runs/cnn-mcu/bundle --key keys/release.key
    """
    from edgewise.bundle.selftest import add_golden
    from edgewise.bundle.signing import load_private, sign_bundle

    private = load_private(key)
    if golden > 0:
        add_golden(path, golden)
    sig = sign_bundle(path, private)
    out_console.print(f"signed {path} with key {sig['key_id']}")


@bundle_app.command("split")
def bundle_split(
    path: Annotated[Path, typer.Argument(help="bundle directory")],
    out: Annotated[Path, typer.Option("--out", "-o", help="where to write the tail bundle")],
    at: Annotated[str | None, typer.Option(help="tensor to split at (default: the input of the last Gemm/MatMul)")] = None,
) -> None:
    """Write the tail of a bundle's model as a bundle named <model>-tail, for features-mode escalation:
    the device sends the embedding at the split point instead of the raw input, the tier above runs the tail.

    Example: edgewise bundle split runs/cnn/bundle --out runs/cnn-tail
    """
    from edgewise.bundle.split import split_bundle

    m = split_bundle(path, out, at)
    feat = m.artifacts["split"]["features"]
    out_console.print(f"wrote {out}: {m.name} {m.version}, input {feat['name']}{feat['shape']}")


@bundle_app.command("inspect")
def bundle_inspect(path: Annotated[Path, typer.Argument(help="bundle directory")]) -> None:
    """Print a bundle's manifest: model, target, inputs/outputs, recipe and metrics.

    Example: edgewise bundle inspect runs/cnn-mcu/bundle
    """
    from edgewise.bundle import read_bundle

    out_console.print_json(read_bundle(path).to_json())


@targets_app.command("list")
def targets_list() -> None:
    """List the built-in target profiles.

    Example: edgewise targets list
    """
    from edgewise.targets import available

    table = Table(title="built-in targets")
    for col in ("name", "tier", "RAM", "flash", "latency budget", "precisions", "objective"):
        table.add_column(col, overflow="fold")
    for t in available():
        table.add_row(t.name, t.tier, _kb(t.ram_bytes), _kb(t.flash_bytes), f"{t.latency_budget_ms:g} ms",
                      ", ".join(t.precisions), t.objective)
    out_console.print(table)


@targets_app.command("show")
def targets_show(name: Annotated[str, typer.Argument(help="built-in name or path to a .toml")]) -> None:
    """Show one target profile in full.

    Example: edgewise targets show mcu-256k
    """
    from dataclasses import asdict

    from edgewise.targets import load_target

    out_console.print_json(json.dumps(asdict(load_target(name))))


keys_app = typer.Typer(help="Ed25519 signing keys: generate, endorse a successor (rotation).", no_args_is_help=True)


@keys_app.command("gen")
def keys_gen(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="directory for NAME.key (private) and NAME.pub")],
    name: Annotated[str, typer.Option(help="file name stem")] = "release",
) -> None:
    """Generate an Ed25519 key pair (the private key is written with mode 0600; never overwritten).

    Example: edgewise keys gen --out keys
    """
    from edgewise.bundle.signing import generate_keys, key_id, load_public

    priv, pub = generate_keys(out_dir, name)
    out.print(f"wrote {priv} (keep secret) and {pub}; key id {key_id(load_public(pub))}")


@keys_app.command("endorse")
def keys_endorse(
    key: Annotated[Path, typer.Option("--key", "-k", help="the currently trusted private key")],
    new: Annotated[Path, typer.Option("--new", help="the successor's public key (.pub)")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="write NAME.endorsement.json here")],
) -> None:
    """Sign a new public key with the trusted one: devices holding the old key accept the new one once the
    endorsement sits in their trust directory (key rotation without re-flashing).

    Example: edgewise keys endorse --key keys/release.key --new keys2/release.pub --out trust/release2.endorsement.json
    """
    import json

    from edgewise.bundle.signing import endorse, load_private, load_public

    if not out_file.name.endswith(".endorsement.json"):
        raise EdgewiseError("--out must end in .endorsement.json")
    cert = endorse(load_private(key), load_public(new))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(cert, indent=2))
    out.print(f"wrote {out_file}: key {cert['key_id']} endorsed by {cert['endorsed_by']['key_id']}")
