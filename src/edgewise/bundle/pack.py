"""Write a bundle atomically (temp dir + rename) and verify one file by file against its manifest."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from edgewise.bundle.manifest import Manifest
from edgewise.errors import BundleError
from edgewise.fsutil import atomic_dir

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bundle(out: Path, manifest: Manifest, files: dict[str, bytes | Path]) -> Path:
    """Write `files` and the manifest (with their hashes) into `out`, all or nothing.

    The bundle is built in a sibling temp directory, fsynced, then renamed into place; an existing
    bundle at `out` is replaced only after the new one is complete.
    """
    out = Path(out)
    if MANIFEST in files:
        raise BundleError("manifest.json is written by the bundle itself")
    for name in files:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"bundle file name {name!r} must be a relative path inside the bundle")
    with atomic_dir(out, error=BundleError, mark=False) as tmp:
        entries: dict[str, dict[str, object]] = {}
        for name, content in sorted(files.items()):
            dest = tmp / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, dest)
            else:
                dest.write_bytes(content)
            entries[name] = {"sha256": sha256_file(dest), "size": dest.stat().st_size}
        created = manifest.created or datetime.now(UTC).isoformat(timespec="seconds")
        (tmp / MANIFEST).write_text(replace(manifest, files=entries, created=created).to_json())
    return out


def read_bundle(path: Path) -> Manifest:
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise BundleError(f"{path} is not a bundle (no {MANIFEST})")
    return Manifest.from_json((path / MANIFEST).read_text())


def verify_bundle(path: Path) -> Manifest:
    """Check every listed file's size and sha256, and that no unlisted file hides in the bundle."""
    path = Path(path)
    manifest = read_bundle(path)
    if "model.onnx" not in manifest.files:
        raise BundleError("manifest lists no model.onnx")
    for name, entry in manifest.files.items():
        f = path / name
        if not f.is_file():
            raise BundleError(f"bundle file missing: {name}")
        if f.stat().st_size != entry.get("size") or sha256_file(f) != entry.get("sha256"):
            raise BundleError(f"bundle file {name} does not match its manifest hash (tampered or corrupt)")
    listed = set(manifest.files) | {MANIFEST, "signature"}
    extra = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()
                   and str(p.relative_to(path)) not in listed)
    if extra:
        raise BundleError(f"bundle holds files its manifest does not list: {', '.join(extra)}")
    return manifest
