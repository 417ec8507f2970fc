"""A bundle as one file for transport (a plain tar), and the careful way back to a directory.

Not compressed: model weights barely compress (random-looking floats: ~8%), while gunzip cost a device
~40 ms of CPU per 5 MB. `unpack` reads compressed archives too.

Unpacking refuses absolute paths, `..`, links, devices and anything else that is not a plain file or
directory, and caps the total size: an archive is untrusted until its manifest and signature verify.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from pathlib import Path

from edgewise.errors import BundleError

MAX_UNPACKED_BYTES = 2 * 2**30


def pack(bundle: Path) -> bytes:
    """The bundle's files (sorted, fixed metadata) as tar bytes: the same bundle gives the same archive."""
    bundle = Path(bundle)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for f in sorted(p for p in bundle.rglob("*") if p.is_file() and not p.name.startswith(".")):
            info = tarfile.TarInfo(str(f.relative_to(bundle)))
            info.size, info.mode, info.mtime = f.stat().st_size, 0o644, 0
            with open(f, "rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


MAX_ENTRIES = 1000  # a bundle is a manifest, a model and a few extras (C sources, self-test)


def unpack(archive: Path, dest: Path, max_bytes: int = MAX_UNPACKED_BYTES, max_entries: int = MAX_ENTRIES) -> Path:
    """Extract `archive` into the empty directory `dest`, refusing anything but plain relative files, and
    more than `max_entries` of them or `max_bytes` in all."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for n, m in enumerate(tar):
                if n >= max_entries:
                    raise BundleError(f"archive holds more than {max_entries} entries; refused")
                parts = Path(m.name).parts
                if "\0" in m.name:
                    raise BundleError(f"archive entry {m.name!r} has a NUL byte in its name")
                if Path(m.name).is_absolute() or ".." in parts or not parts:
                    raise BundleError(f"archive entry {m.name!r} escapes the bundle directory")
                if m.isdir():
                    (dest / m.name).mkdir(parents=True, exist_ok=True)
                    continue
                if not m.isfile():
                    raise BundleError(f"archive entry {m.name!r} is a link or special file; refused")
                total += m.size
                if total > max_bytes:
                    raise BundleError(f"archive unpacks to more than {max_bytes:,} bytes; refused")
                target = dest / m.name
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                if src is None:
                    raise BundleError(f"archive entry {m.name!r} cannot be read")
                with open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as e:
        raise BundleError(f"{archive}: not a readable bundle archive ({type(e).__name__}: {e})") from e
    return dest

