"""Two slots (A/B) and one pointer file per model: what a device runs survives a power cut at any moment.

`state.json` names the active slot; it is replaced by write-temp + fsync + rename + fsync(dir), so after
a crash it is either the old pointer or the new one, never half. The inactive slot is scratch space until
a verified bundle lands in it and the pointer moves.

A device runs several models (`SlotSet`): each has its own pair under `models/<name>/`, installed, rolled
back and recovered on its own, and `device.json` keeps the newest assignment serial the device accepted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgewise.bundle import verify_bundle
from edgewise.errors import AgentError, EdgewiseError
from edgewise.fsutil import atomic_write, fsync_dir


@dataclass
class SlotState:
    active: str | None = None  # "a" | "b" | None (nothing installed yet)
    model: str | None = None
    version: str | None = None
    previous: dict[str, Any] | None = None  # {"slot", "version"}: where an automatic rollback goes
    installed_serial: int = 0  # the assignment this model's active version was installed (or confirmed) under
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


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def model_dir_name(model: str) -> str:
    """A model's directory: its name when that is a plain file name, else a digest of it (a name is any
    string a manifest holds: it never becomes a path of its own)."""
    if _SAFE_NAME.fullmatch(model):
        return model
    return "m-" + hashlib.sha256(model.encode()).hexdigest()[:24]


class SlotSet:
    """The slots of every model a device runs, and the device's replay guard (`last_serial`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.models_dir = self.root / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "device.json"
        try:
            self.last_serial = int(json.loads(self.path.read_text())["last_serial"]) if self.path.exists() else 0
        except (ValueError, TypeError, KeyError, OSError) as e:
            raise AgentError(f"{self.path} is unreadable ({e}); remove it to accept the fleet's assignment again") from e
        self._slots: dict[str, Slots] = {}
        self._migrate_single()
        self.recovered: dict[str, str] | None = None

    def save(self) -> None:
        atomic_write(self.path, json.dumps({"last_serial": self.last_serial}).encode())

    def _migrate_single(self) -> None:
        """A device from before several models: `state.json`, `a` and `b` at the root move into the model's
        own directory; the pointer moves last, so a power cut part-way repeats the move at the next start."""
        legacy = self.root / "state.json"
        if not legacy.exists():
            return
        try:
            data = json.loads(legacy.read_text())
        except (ValueError, OSError) as e:
            raise AgentError(f"{legacy} is unreadable ({e}); remove it to reinstall from the fleet") from e
        if int(data.get("last_serial") or 0) > self.last_serial:
            self.last_serial = int(data["last_serial"])
            self.save()
        if not data.get("model"):
            legacy.unlink()
            return
        dest = self.models_dir / model_dir_name(data["model"])
        dest.mkdir(parents=True, exist_ok=True)
        for slot in ("a", "b"):
            if (self.root / slot).exists():
                shutil.rmtree(dest / slot, ignore_errors=True)
                os.replace(self.root / slot, dest / slot)
        fsync_dir(dest)
        os.replace(legacy, dest / "state.json")
        fsync_dir(dest)
        fsync_dir(self.root)

    def of(self, model: str) -> Slots:
        """The slots of `model` (made empty the first time the model is assigned here)."""
        if model not in self._slots:
            self._slots[model] = Slots(self.models_dir / model_dir_name(model))
        return self._slots[model]

    def models(self) -> list[str]:
        """Models with an installed version, by name."""
        for d in sorted(self.models_dir.iterdir()):
            if (d / "state.json").is_file():
                s = Slots(d)
                if s.state.model and s.state.model not in self._slots:
                    self._slots[s.state.model] = s
        return sorted(m for m, s in self._slots.items() if s.state.active)

    def versions(self) -> dict[str, str | None]:
        return {m: self.of(m).state.version for m in self.models()}

    def recover(self) -> dict[str, str]:
        """After a restart, per model: 'ok', 'rolled_back' (to its previous slot) or 'broken' (Slots.recover).
        Done once per process: the agent's OTA thread and its updater share these slots."""
        if self.recovered is None:
            self.recovered = {m: self.of(m).recover() for m in self.models()}
        return self.recovered
