"""Semantic versions, one rule for bundles, the fleet and devices: MAJOR.MINOR.PATCH with an optional
-pre-release and +build. Compared as numbers (1.10.0 > 1.9.3); a pre-release sorts before its release;
build metadata does not count."""

from __future__ import annotations

import re

from edgewise.errors import BundleError

SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


def parse(version: str) -> tuple[int, int, int, int, str]:
    m = SEMVER.match(version) if isinstance(version, str) else None
    if not m:
        raise BundleError(f"version {version!r} is not semantic (MAJOR.MINOR.PATCH, optional -pre and +build)")
    major, minor, patch, pre = m.groups()
    return int(major), int(minor), int(patch), 0 if pre else 1, pre or ""


def older(a: str, b: str) -> bool:
    """True when version `a` is older than `b`."""
    return parse(a) < parse(b)
