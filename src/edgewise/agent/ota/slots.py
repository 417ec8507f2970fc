"""Two model slots (A/B) and one pointer file: what a device runs survives a power cut at any moment.

`state.json` names the active slot; it is replaced by write-temp + fsync + rename + fsync(dir), so after
a crash it is either the old pointer or the new one, never half. The inactive slot is scratch space until
a verified bundle lands in it and the pointer moves.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgewise.bundle import verify_bundle
from edgewise.errors import AgentError, EdgewiseError
from edgewise.fsutil import atomic_write


@dataclass
class SlotState:
    active: str | None = None  # "a" | "b" | None (nothing installed yet)
    model: str | None = None
    version: str | None = None
    previous: dict[str, Any] | None = None  # {"slot", "version"}: where an automatic rollback goes
    last_serial: int = 0  # newest assignment serial accepted: older metadata is a replay
    installed_serial: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Slots:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "state.json"
        self.state = self._read()
        self.recovered: str | None = None  # what `recover` found, once per process

    def _read(self) -> SlotState:
        if not self.path.exists():
            return SlotState()
        try:
            data = json.loads(self.path.read_text())
            return SlotState(**{k: v for k, v in data.items() if k in SlotState.__dataclass_fields__})
        except (ValueError, TypeError, OSError) as e:
            raise AgentError(f"{self.path} is unreadable ({e}); remove it to reinstall from the fleet") from e

    def save(self) -> None:
        atomic_write(self.path, json.dumps(asdict(self.state)).encode())

    def dir(self, slot: str) -> Path:
        return self.root / slot

    @property
    def active_dir(self) -> Path | None:
        return self.dir(self.state.active) if self.state.active else None

    @property
    def inactive(self) -> str:
        return "b" if self.state.active == "a" else "a"

    def clear_inactive(self) -> Path:
        d = self.dir(self.inactive)
        shutil.rmtree(d, ignore_errors=True)
        return d

    def activate(self, slot: str, model: str, version: str, serial: int | None = None) -> None:
        """Move the pointer (the one atomic step of an install); the old slot is kept for rollback."""
        prev = {"slot": self.state.active, "version": self.state.version} if self.state.active else None
        self.state.active, self.state.model, self.state.version, self.state.previous = slot, model, version, prev
        if serial is not None:
            self.state.installed_serial = serial
        self.save()

    def recover(self) -> str:
        """After a restart: keep the active slot if it verifies, else fall back to the previous one.
        Done once per process: the agent's OTA thread and its updater share these slots."""
        if self.recovered is None:
            self.recovered = self._recover()
        return self.recovered

    def _recover(self) -> str:
        if self.state.active is None:
            return "empty"
        try:
            verify_bundle(self.dir(self.state.active))
            return "ok"
        except EdgewiseError:
            prev = self.state.previous
            if prev and prev.get("slot"):
                try:
                    m = verify_bundle(self.dir(prev["slot"]))
                except EdgewiseError:
                    pass
                else:
                    self.state.active, self.state.model, self.state.version = prev["slot"], m.name, m.version
                    self.state.previous = None
                    self.save()
                    return "rolled_back"
            self.state.active = None
            self.save()
            return "broken"
