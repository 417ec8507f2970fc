"""One lock around NumPy's .npy header parsing, for code that reads arrays from several threads.

NumPy parses an .npy header with `ast.literal_eval`. On CPython 3.11 up to 3.11.7, concurrent AST
construction from several threads can raise `SystemError: AST constructor recursion depth mismatch`
(CPython gh-106905): seen here when several devices' updaters self-tested bundles at once. The parse is
microseconds; the lock costs nothing measurable.
"""

from __future__ import annotations

import threading

HEADER_LOCK = threading.Lock()

__all__ = ["HEADER_LOCK"]
