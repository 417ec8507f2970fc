"""The written contract between devices and the fleet: every path, message field, step name, topic and
header format both sides use. The agent and the fleet import this (and `bundle`), never each other.

Versions follow `edgewise.bundle.version` (one semver rule for bundles, fleet and devices).
"""

from __future__ import annotations

from typing import Any

# ---- HTTP paths (device API; the admin API is the fleet's own) ---------------------------------------
ENROLL = "/v1/device/enroll"
ASSIGNMENT = "/v1/device/assignment"
REPORT = "/v1/device/report"
BUNDLES = "/v1/device/bundles/"  # + sha256
FLEET_KEY = "/v1/keys/fleet.pub"

# ---- MQTT: the fleet wakes a device between polls ----------------------------------------------------
NOTIFY_TOPIC = "edgewise/fleet/{device_id}"
# A wave of many devices sharing a tag is announced once, on the tag's topic; each device learns its tags from
# its signed assignment (`tags`) and, told there, polls after a random delay (not all at once).
NOTIFY_TAG_TOPIC = "edgewise/fleet/tag/{tag}"
NOTIFY_PAYLOAD = b"assignment"

# ---- steps a device reports while it installs an assignment -----------------------------------------
STEPS = ("download", "verify", "selftest", "switch", "health", "gave_up", "retrying")
# A failed report of one of these settles the device's assignment as failed; `health` ok settles it healthy.
# `retrying`: a download the network cut short, kept to resume at the next poll (after a few, `gave_up`).
SETTLING_STEPS = tuple(s for s in STEPS if s != "retrying")


def device_auth(device_id: str, secret: str) -> dict[str, str]:
    """The header a device sends on every device API call."""
    return {"Authorization": f"Bearer {device_id}.{secret}"}


def parse_device_auth(header: str) -> tuple[str, str] | None:
    """(device_id, secret) from an Authorization header, or None when it is not a device credential."""
    got = header.removeprefix("Bearer ").strip()
    device_id, _, secret = got.partition(".")
    return (device_id, secret) if device_id and secret else None


def bundle_url(base_url: str, sha256: str, static: str | None = None) -> str:
    """Where a device fetches a bundle: the fleet's own device route (authenticated), or `static`: a file
    server's base URL (or a path on the fleet server, like /bundles) holding `<sha256>.tar` files."""
    if static:
        root = static if "://" in static else base_url.rstrip("/") + "/" + static.strip("/")
        return f"{root.rstrip('/')}/{sha256}.tar"
    return f"{base_url.rstrip('/')}{BUNDLES}{sha256}"


def same_origin(url: str, server: str) -> bool:
    """A URL on the fleet server itself (scheme, host and port): only there does a device send its
    credential. A bundle on a file server needs none; it is verified on the device."""
    from urllib.parse import urlsplit

    a, b = urlsplit(url), urlsplit(server)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


# ---- the signed assignment --------------------------------------------------------------------------
# A device runs several models, each in its own A/B slot pair. Its signed assignment names the desired
# (model, version) of each model the fleet manages there, one entry of `models` per model; a model the
# assignment does not name is left as it is. `serial` grows with every change to any of them (a device
# refuses an older document: a replay); each entry carries the serial of its own assignment, which the
# device reports its steps under. `serial` 0 with no entries means "nothing assigned".
ASSIGNMENT_FIELDS: dict[str, tuple[type, ...]] = {"device_id": (str,), "expires": (int, float), "serial": (int,),
                                                  "models": (list,)}
ASSIGNED_FIELDS: dict[str, tuple[type, ...]] = {"model": (str,), "version": (str,), "sha256": (str,),
                                                "size": (int,), "url": (str,), "rollback": (bool,), "serial": (int,)}
MAX_MODELS = 64  # models one device may be assigned


def _type_error(doc: dict[str, Any], want: dict[str, tuple[type, ...]], where: str) -> str | None:
    for key, types in want.items():
        v = doc.get(key)
        if isinstance(v, bool) and bool not in types or not isinstance(v, types):
            return (f"{where} field {key!r} must be {' or '.join(t.__name__ for t in types)}, "
                    f"got {type(v).__name__}")
    return None


def field_type_error(doc: dict[str, Any]) -> str | None:
    """What is wrong with an assignment body's field types, or None."""
    tags = doc.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        return "assignment field 'tags' must be a list of strings"
    wrong = _type_error(doc, ASSIGNMENT_FIELDS, "assignment")
    if wrong:
        return wrong
    if len(doc["models"]) > MAX_MODELS:
        return f"assignment names {len(doc['models'])} models; at most {MAX_MODELS}"
    names = set()
    for m in doc["models"]:
        if not isinstance(m, dict):
            return "assignment 'models' entries must be objects"
        wrong = _type_error(m, ASSIGNED_FIELDS, "assignment model")
        if wrong:
            return wrong
        if m["model"] in names:
            return f"assignment names model {m['model']!r} twice"
        names.add(m["model"])
    return None


__all__ = ["ASSIGNED_FIELDS", "ASSIGNMENT", "ASSIGNMENT_FIELDS", "BUNDLES", "ENROLL", "FLEET_KEY", "MAX_MODELS",
           "NOTIFY_PAYLOAD", "NOTIFY_TAG_TOPIC", "NOTIFY_TOPIC", "REPORT", "SETTLING_STEPS", "STEPS", "bundle_url",
           "device_auth", "field_type_error", "parse_device_auth", "same_origin"]
