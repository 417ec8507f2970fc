"""All-or-nothing output directories: build in a hidden sibling, fsync, then rename into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgewise.errors import EdgewiseError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o666) -> None:
    """Replace `path` with `data` all or nothing: a hidden temp file, fsync, rename, fsync the directory.
    After a crash the file holds either the old bytes or the new ones, never a mix. `mode` (less the
    umask) applies from the first byte written, so a private key is never readable by others."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover from a crash keeps its old mode under O_CREAT
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_tree(root: Path) -> None:
    """Every file and directory under `root` on disk (before a pointer to it is switched)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with open(Path(dirpath) / name, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


@contextmanager
def atomic_dir(out: Path, replace: bool = True, error: type[EdgewiseError] = EdgewiseError) -> Iterator[Path]:
    """Yield a temp directory beside `out`; on success it becomes `out`, on any error it vanishes.

    An existing `out` is swapped out only after the new directory is complete (and removed only then).
    OS errors surface as `error` with the path and reason.
    """
    out = Path(out)
    if out.exists() and not replace:
        raise error(f"{out} already exists (pass --force to replace it)")
    if out.exists() and not out.is_dir():
        raise error(f"{out} exists and is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise error(f"cannot write to {out}: {e.strerror or e}") from e
    try:
        yield tmp
        fsync_tree(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
        fsync_dir(out.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise error(f"cannot write {out}: {e.strerror or e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
