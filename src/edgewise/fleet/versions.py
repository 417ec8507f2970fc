"""Semantic versions compared as numbers: 1.10.0 > 1.9.3; a pre-release sorts before its release."""

from __future__ import annotations

import re

from edgewise.errors import FleetError

_V = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


def parse(version: str) -> tuple[int, int, int, int, str]:
    m = _V.match(version or "")
    if not m:
        raise FleetError(f"version {version!r} is not MAJOR.MINOR.PATCH")
    major, minor, patch, pre = m.groups()
    return int(major), int(minor), int(patch), 0 if pre else 1, pre or ""


def older(a: str, b: str) -> bool:
    """True when version `a` is older than `b`."""
    return parse(a) < parse(b)
