"""HOST:PORT as the CLI takes it (an MQTT broker, a SuperLink), with the caller's error type."""

from __future__ import annotations

from edgewise.errors import EdgewiseError


def parse_hostport(value: str, what: str, error: type[EdgewiseError] = EdgewiseError) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise error(f"{what} must be HOST:PORT, got {value!r}")
    return host, int(port)
