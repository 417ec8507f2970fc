"""The device updater: poll the fleet, download with resume, verify, stage in the inactive slot,
self-test, switch atomically, check health, roll back on any failure, and report every step; for each model
the device's signed assignment names, each in its own slots (a model's failure never touches another's).

Async on httpx, so the same code runs inside an agent (one device) and in the fleet simulator (a
thousand devices as tasks in one process). Every network call has a timeout; retries are bounded and
reported; a device that gives up says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from edgewise.agent.ota.slots import Slots, SlotSet
from edgewise.bundle.archive import MAX_UNPACKED_BYTES as MAX_BUNDLE_BYTES
from edgewise.bundle.archive import unpack
from edgewise.bundle.pack import sha256_file
from edgewise.bundle.selftest import check_golden
from edgewise.bundle.signing import TrustStore, canonical, verify_signed_bundle
from edgewise.bundle.version import older
from edgewise.bundle.version import parse as parse_version
from edgewise.errors import AgentError, EdgewiseError
from edgewise.fsutil import fsync_tree
from edgewise.protocol import ASSIGNMENT, ENROLL, REPORT, device_auth, field_type_error, same_origin

log = logging.getLogger("edgewise.agent.ota.updater")


@dataclass
class Identity:
    server: str
    device_id: str
    secret: str

    @property
    def auth(self) -> dict[str, str]:
        return device_auth(self.device_id, self.secret)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"server": self.server, "device_id": self.device_id, "secret": self.secret}, f)

    @classmethod
    def load(cls, path: Path) -> Identity:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise AgentError(f"cannot read device identity {path}: {e}; enrol with `edgewise device enroll`") from e


async def enroll(client: httpx.AsyncClient, server: str, token: str, name: str, timeout_s: float = 10) -> Identity:
    try:
        r = await client.post(f"{server}{ENROLL}", json={"token": token, "name": name}, timeout=timeout_s)
    except httpx.HTTPError as e:
        raise AgentError(f"cannot reach the fleet at {server}: {e}") from e
    if r.status_code != 200:
        raise AgentError(f"enrolment refused ({r.status_code}): {r.text[:200]}")
    return Identity(server, **r.json())


def model_selftest(bundle: Path) -> dict[str, Any]:
    """Load the bundle's model in ONNX Runtime and run its golden pairs."""
    from edgewise.profile.runtime import make_session

    try:
        session = make_session((bundle / "model.onnx").read_bytes(), threads=1)
    except Exception as e:  # ORT raises its own exception types for every kind of broken model
        raise AgentError(f"model does not load: {str(e).splitlines()[0][:200]}") from e
    name = session.get_inputs()[0].name
    t = time.perf_counter()
    out = check_golden(bundle, lambda x: session.run(None, {name: x})[0])
    return out | {"latency_ms": (time.perf_counter() - t) * 1e3 / max(1, out["pairs"])}


# What one poll did, most telling first: a poll over several models says the worst of their outcomes.
OUTCOMES = ("rolled_back", "failed", "deferred", "installed", "current")
DOWNLOAD_POLLS = 5  # polls a download cut short by the network is resumed at before the device gives up


class TransientError(AgentError):
    """The network or the server failed (timeouts, resets, 5xx, 429) after every retry: worth another try
    at the next poll, unlike a download that arrived wrong."""


class Updater:
    def __init__(self, ident: Identity, slots: SlotSet, release_keys: TrustStore, fleet_keys: TrustStore,
                 client: httpx.AsyncClient, selftest: Callable[[Path], dict[str, Any]] = model_selftest,
                 on_switch: Callable[[Path], Awaitable[None] | None] | None = None,
                 health: Callable[[Path], dict[str, Any]] | None = None,
                 timeout_s: float = 10.0, retries: int = 4, backoff_s: float = 0.2,
                 download_polls: int = DOWNLOAD_POLLS) -> None:
        self.ident, self.slots, self.release_keys, self.fleet_keys = ident, slots, release_keys, fleet_keys
        self.client, self.selftest, self.on_switch = client, selftest, on_switch
        self.health = health or selftest
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.download_polls = download_polls
        self.downloads = self.slots.root / "download"
        self.pending_reports = self.slots.root / "reports.jsonl"  # reports that could not be sent yet
        self.recovered = self.slots.recover()  # per model, after a power cut: its active slot, or its previous
        self.bytes_downloaded = 0
        self.tags: list[str] = []
        self.on_tags: Callable[[list[str]], None] | None = None  # told when the signed tags change
        self.log: list[tuple[str, bool, str]] = []
        self.outcomes: dict[str, str] = {}  # the last poll's outcome per model
        self.polls = 0  # polls finished (whatever their outcome)

    # ---- plumbing -----------------------------------------------------------------------------------
    async def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One API call with a timeout and bounded retries on transport errors, 5xx and 429."""
        last: Exception | None = None
        for attempt in range(self.retries):
            try:
                r = await self.client.request(method, self.ident.server + path, headers=self.ident.auth,
                                              timeout=self.timeout_s, **kw)
                if r.status_code < 500 and r.status_code != 429:
                    return r
                last = AgentError(f"{method} {path}: {r.status_code}")
            except httpx.HTTPError as e:
                last = e
            await asyncio.sleep(self.backoff_s * 2**attempt * (0.5 + random.random()))
        raise AgentError(f"fleet unreachable after {self.retries} tries: {last}")

    async def report(self, slots: Slots, model: str, step: str, ok: bool, serial: int | None, detail: str = "",
                     **metrics: Any) -> None:
        """Report a step of `model` (in `slots`); reports that cannot be sent wait in a file and go with the
        next poll."""
        self.log.append((step, ok, detail))
        body = {"step": step, "ok": ok, "serial": serial, "detail": detail[:900], "model": model,
                "active_version": slots.state.version, "version": metrics.pop("version", None), **metrics}
        try:
            await self._flush_reports()
            r = await self._call("POST", REPORT, json=body)
            if r.status_code != 200:
                raise AgentError(f"report refused: {r.status_code}")
        except AgentError:
            with open(self.pending_reports, "a") as f:
                f.write(json.dumps(body) + "\n")

    async def _flush_reports(self) -> None:
        pending = self.pending_reports
        if not pending.exists():
            return
        for line in pending.read_text().splitlines():
            try:
                await self._call("POST", REPORT, json=json.loads(line))
            except (AgentError, ValueError):
                return
        pending.unlink(missing_ok=True)

    # ---- the update --------------------------------------------------------------------------------
    async def fetch_assignment(self) -> dict[str, Any]:
        r = await self._call("GET", ASSIGNMENT)
        if r.status_code != 200:
            raise AgentError(f"assignment refused: {r.status_code} {r.text[:200]}")
        try:
            doc = r.json()
            a = doc["assignment"]
            self.fleet_keys.verify(canonical(a), doc["signature"])
        except (ValueError, KeyError, TypeError, EdgewiseError) as e:
            raise AgentError(f"assignment metadata does not verify: {e}") from e
        _check_fields(a)
        if a.get("device_id") != self.ident.device_id:
            raise AgentError("assignment is for another device")
        if float(a.get("expires", 0)) < time.time():
            raise AgentError("assignment metadata has expired (stale or replayed)")
        if int(a.get("serial", 0)) < self.slots.last_serial:
            raise AgentError(f"assignment serial {a.get('serial')} is older than {self.slots.last_serial} "
                             "already seen (replayed)")
        tags = sorted(set(a.get("tags", [])))
        if tags != self.tags:  # the fleet's word on this device's tags (signed): where waves are announced
            self.tags = tags
            if self.on_tags is not None:
                self.on_tags(tags)
        return a

    async def poll_once(self) -> str:
        """One round: 'idle', 'refused', or over the models assigned, the most telling of 'current',
        'installed', 'deferred' (a download the network cut short, resumed at the next poll), 'failed' and
        'rolled_back' (each model's own is in `outcomes`)."""
        await self._flush_reports()
        try:
            a = await self.fetch_assignment()
        except AgentError as e:
            self.log.append(("assignment", False, str(e)))
            return "refused"
        if a["serial"] > self.slots.last_serial:
            self.slots.last_serial = a["serial"]
            await asyncio.to_thread(self.slots.save)
        if not a["models"]:
            return "idle"
        self.outcomes = {m["model"]: await self._apply(m) for m in a["models"]}
        return next(o for o in OUTCOMES if o in self.outcomes.values())

    async def _apply(self, m: dict[str, Any]) -> str:
        """One model's assignment: 'current', 'installed', 'failed' or 'rolled_back'."""
        slots, serial = self.slots.of(m["model"]), m["serial"]
        st = slots.state
        if m["version"] == st.version:
            if st.installed_serial != serial:  # e.g. restarted after the switch, or a rollback to this version
                return await self._confirm_health(slots, m["model"], serial, m["version"])
            return "current"
        if st.extra.get("failed_serial") == serial:
            return "failed"  # this assignment already failed here; wait for a new one
        if st.version and older(m["version"], st.version) and not m["rollback"]:
            return await self._fail(slots, m["model"], serial, "verify", f"refused downgrade {st.version} -> "
                                    f"{m['version']} without a signed rollback instruction", m["version"])
        return await self._install(slots, m)

    async def _fail(self, slots: Slots, model: str, serial: int, step: str, detail: str, version: str) -> str:
        slots.state.extra["failed_serial"] = serial
        await asyncio.to_thread(slots.save)
        await self.report(slots, model, step, False, serial, detail, version=version)
        return "failed"

    async def _install(self, slots: Slots, a: dict[str, Any]) -> str:
        serial, version, model = a["serial"], a["version"], a["model"]
        try:
            archive = await self._download(a)
        except TransientError as e:  # the part file stays: the next poll resumes it, a few times, then gives up
            extra = slots.state.extra
            tries = (extra.get("download_polls", 0) if extra.get("deferred_serial") == serial else 0) + 1
            if tries >= self.download_polls:
                return await self._fail(slots, model, serial, "gave_up", f"{e} (at {tries} polls)", version)
            slots.state.extra.update(deferred_serial=serial, download_polls=tries)
            await asyncio.to_thread(slots.save)
            await self.report(slots, model, "retrying", False, serial, f"{e}; resuming at the next poll "
                              f"({tries} of {self.download_polls})", version=version)
            return "deferred"
        except AgentError as e:
            return await self._fail(slots, model, serial, "download", str(e), version)
        await self.report(slots, model, "download", True, serial, f"{a['size']} bytes", version=version)
        slot = slots.inactive
        target = await asyncio.to_thread(slots.clear_inactive)
        try:
            await asyncio.to_thread(unpack, archive, target)
            manifest, key = await asyncio.to_thread(verify_signed_bundle, target, self.release_keys)
            if (manifest.name, manifest.version) != (model, version):
                raise AgentError(f"bundle is {manifest.name} {manifest.version}, assignment says {model} {version}")
        except EdgewiseError as e:
            archive.unlink(missing_ok=True)
            await asyncio.to_thread(slots.clear_inactive)  # nothing of a refused bundle stays on disk
            return await self._fail(slots, model, serial, "verify", str(e), version)
        await self.report(slots, model, "verify", True, serial, f"signed by {key}", version=version)
        try:
            st = await asyncio.to_thread(self.selftest, target)
        except EdgewiseError as e:
            return await self._fail(slots, model, serial, "selftest", str(e), version)
        await self.report(slots, model, "selftest", True, serial, json.dumps(st), version=version)
        await asyncio.to_thread(fsync_tree, target)  # the new slot is on disk before the pointer names it
        await asyncio.to_thread(slots.activate, slot, model, version, None)
        archive.unlink(missing_ok=True)
        await self.report(slots, model, "switch", True, serial, f"slot {slot}", version=version)
        return await self._confirm_health(slots, model, serial, version)

    async def _serve(self, bundle: Path) -> None:
        if self.on_switch is not None:
            res = self.on_switch(bundle)
            if asyncio.iscoroutine(res):
                await res

    async def _confirm_health(self, slots: Slots, model: str, serial: int, version: str) -> str:
        """After a switch: hand the model to the service and check it; roll back if either fails."""
        active = slots.active_dir
        try:
            if active is not None:
                await self._serve(active)
            h = await asyncio.to_thread(self.health, active) if active is not None else {}
        except Exception as e:  # whatever broke, the device must end on a model that works
            prev = slots.state.previous
            detail = f"health check failed: {str(e)[:300]}"
            if prev and prev.get("slot"):
                await asyncio.to_thread(slots.activate, prev["slot"], model, prev["version"], None)
                slots.state.previous = None
                await asyncio.to_thread(slots.save)
                try:
                    await self._serve(slots.dir(prev["slot"]))
                except Exception:  # noqa: BLE001 - the device is already back on its previous model
                    log.exception("ota: re-serving the previous model after a failed health check failed")
                detail += f"; rolled back to {prev['version']}"
            await self._fail(slots, model, serial, "health", detail, version)
            return "rolled_back"
        # Report first, then record: a power cut in between re-sends the report after boot (the server
        # ignores the repeat), never the reverse (a rollout waiting forever for a report nobody sends).
        await self.report(slots, model, "health", True, serial, "", version=version,
                          error_rate=h.get("error_rate", 0.0), latency_ms=h.get("latency_ms"))
        slots.state.installed_serial = serial
        for key in ("failed_serial", "deferred_serial", "download_polls"):
            slots.state.extra.pop(key, None)
        await asyncio.to_thread(slots.save)
        return "installed"

    async def _download(self, a: dict[str, Any]) -> Path:
        """Fetch the archive to `download/<sha>.part`, resuming with Range; verify size and sha256."""
        self.downloads.mkdir(parents=True, exist_ok=True)
        sha, size = a["sha256"], int(a["size"])
        part = self.downloads / f"{sha}.part"
        done = self.downloads / f"{sha}.tar"
        if done.exists() and done.stat().st_size == size:
            return done
        last: Exception | None = None
        resumed = part.exists() and part.stat().st_size > 0
        for attempt in range(self.retries):
            have = part.stat().st_size if part.exists() else 0
            if have > size:
                part.unlink()
                have = 0
            # the credential goes to the fleet server only, never to a file server or CDN
            headers = dict(self.ident.auth) if same_origin(a["url"], self.ident.server) else {}
            if have:
                headers["Range"] = f"bytes={have}-"
            try:
                async with self.client.stream("GET", a["url"], headers=headers, timeout=self.timeout_s) as r:
                    if r.status_code == 416 and have == size:
                        break
                    if r.status_code >= 500 or r.status_code == 429:
                        raise httpx.HTTPStatusError(f"server answered {r.status_code}", request=r.request,
                                                    response=r)
                    if r.status_code not in (200, 206):
                        raise AgentError(f"download refused: {r.status_code}")
                    with open(part, "ab" if r.status_code == 206 else "wb") as f:
                        async for chunk in r.aiter_bytes(1 << 16):
                            self.bytes_downloaded += len(chunk)
                            f.write(chunk)
                            if f.tell() > size:
                                raise AgentError(f"server sent more than the {size} bytes the assignment says")
                        # no fsync: a part file that lost its tail in a power cut fails its sha256 and is fetched again
                break
            except (httpx.HTTPError, OSError) as e:
                last = e
                await asyncio.sleep(self.backoff_s * 2**attempt * (0.5 + random.random()))
        else:
            raise TransientError(f"download failed after {self.retries} tries: {last}")
        got = part.stat().st_size if part.exists() else 0
        if got != size:
            part.unlink(missing_ok=True)
            raise AgentError(f"download is {got} bytes, the assignment says {size} (truncated)")
        if await asyncio.to_thread(sha256_file, part) != sha:
            part.unlink()
            if resumed:  # the bytes kept from before (a power cut, a bad disk) were wrong: once more, whole
                return await self._download(a)
            raise AgentError("download does not match its sha256 (corrupted in transit or tampered)")
        part.replace(done)
        return done

    async def run(self, interval_s: float = 30.0, stop: asyncio.Event | None = None,
                  wake: asyncio.Event | None = None) -> None:
        """Poll forever with jitter (so a fleet does not arrive in lockstep) until `stop` is set;
        `wake` (an MQTT notification) cuts the wait short."""
        stop, wake = stop or asyncio.Event(), wake or asyncio.Event()
        while not stop.is_set():
            wake.clear()
            try:
                await self.poll_once()
            except Exception as e:  # never let one bad round end the updater
                self.log.append(("poll", False, str(e)[:300]))
            self.polls += 1
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
            await asyncio.wait(waits, timeout=interval_s * (0.5 + random.random()),
                               return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()


_HEX = frozenset("0123456789abcdef")


def _check_fields(a: Any) -> None:
    """Every field of signed assignment metadata has the type it must: a compromised or buggy server's
    odd values are refused (and reported) here, not met as a TypeError half-way through an install."""
    if not isinstance(a, dict):
        raise AgentError("assignment must be an object")
    wrong = field_type_error(a)
    if wrong:
        raise AgentError(wrong)
    if a["serial"] < 0 or not math.isfinite(a["expires"]):
        raise AgentError("assignment serial or expiry out of range")
    for m in a["models"]:
        if m["serial"] <= 0 or m["serial"] > a["serial"]:
            raise AgentError(f"assignment serial of model {m['model']!r} is out of range")
        if len(m["sha256"]) != 64 or not set(m["sha256"]) <= _HEX:
            raise AgentError("assignment sha256 is not a hex digest")
        if not 0 < m["size"] <= MAX_BUNDLE_BYTES:
            raise AgentError(f"assignment size {m['size']} is out of range (at most {MAX_BUNDLE_BYTES:,} bytes)")
        try:
            parse_version(m["version"])
        except EdgewiseError as e:
            raise AgentError(f"assignment {e}") from e
