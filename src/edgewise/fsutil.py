"""All-or-nothing output directories: build in a hidden sibling, then rename into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgewise.errors import EdgewiseError


@contextmanager
def atomic_dir(out: Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temp directory beside `out`; on success it becomes `out`, on any error it vanishes.

    An existing `out` is swapped out only after the new directory is complete (and removed only then).
    """
    out = Path(out)
    if out.exists() and not replace:
        raise EdgewiseError(f"{out} already exists (pass --force to replace it)")
    if out.exists() and not out.is_dir():
        raise EdgewiseError(f"{out} exists and is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise EdgewiseError(f"cannot write to {out.parent}: {e.strerror or e}") from e
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise EdgewiseError(f"cannot write {out}: {e.strerror or e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
