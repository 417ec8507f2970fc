"""All-or-nothing output directories: build in a hidden sibling, fsync, then rename into place."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
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


# Written into every output directory edgewise makes (bundles are recognised by their manifest), so a
# later run replaces only what edgewise wrote, never a user's own directory.
OUT_MARKER = ".edgewise-output"


def _edgewise_made(path: Path) -> bool:
    if (path / OUT_MARKER).is_file():
        return True
    try:
        import json

        doc = json.loads((path / "manifest.json").read_text())
        return isinstance(doc, dict) and "format_version" in doc and "files" in doc
    except (OSError, ValueError):
        return False


def check_out(out: Path, error: type[EdgewiseError] = EdgewiseError, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse, before any work starts, an output path edgewise could not or must not replace: a file, a
    non-empty directory edgewise did not write, a place this user cannot write to, or one that holds (or
    lies inside) one of the run's own inputs."""
    out = Path(out)
    where = out.resolve()
    for src in inputs:
        s = Path(src).resolve()
        if s == where or where in s.parents or s in where.parents:
            raise error(f"{out} would overwrite the input {src}: choose an output outside it")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise error(f"{out} exists and is not a directory")
        if any(out.iterdir()) and not _edgewise_made(out):
            raise error(f"{out} holds files edgewise did not write; choose another output directory "
                        "(nothing was changed)")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise error(f"cannot write to {out}: {parent} is not a writable directory")


def _sweep_stale(out: Path) -> None:
    """Remove what an earlier run killed mid-write left beside `out` (its process no longer exists)."""
    for p in out.parent.glob(f".{out.name}.tmp-*-*"):
        pid = p.name.removeprefix(f".{out.name}.tmp-").split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(p, ignore_errors=True)


@contextmanager
def atomic_dir(out: Path, replace: bool = True, error: type[EdgewiseError] = EdgewiseError,
               mark: bool = True) -> Iterator[Path]:
    """Yield a temp directory beside `out`; on success it becomes `out`, on any error it vanishes.

    An existing `out` is swapped out only after the new directory is complete (and removed only then),
    and only if edgewise wrote it (`mark` leaves OUT_MARKER in what it writes). OS errors surface as
    `error` with the path and reason.
    """
    out = Path(out)
    if out.exists() and not replace:
        raise error(f"{out} already exists (pass --force to replace it)")
    check_out(out, error)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _sweep_stale(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    except OSError as e:
        raise error(f"cannot write to {out}: {e.strerror or e}") from e
    try:
        yield tmp
        if mark:
            (tmp / OUT_MARKER).write_text("written by edgewise; a later run may replace this directory\n")
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


_CWD_LOCK = threading.Lock()


@contextmanager
def scratch_cwd() -> Iterator[Path]:
    """Run a block with a fresh temporary directory as the working directory (removed after).

    For tools that drop files into the current directory: ONNX Runtime's symbolic shape inference saves
    `sym_shape_infer_temp.onnx` and its external data there when it gives up. The working directory is
    process-wide, so callers take turns.
    """
    with _CWD_LOCK, tempfile.TemporaryDirectory(prefix="edgewise-scratch-") as tmp:
        before = os.getcwd()
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(before)
