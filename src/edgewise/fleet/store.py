"""The fleet's state and rules, free of HTTP: registry, enrolment, credentials, rollouts and their gates.

A rollout targets the devices carrying a tag, in waves (cumulative percentages). Entering a wave writes one
assignment per new device; a device's desired state is its newest assignment not cancelled. A wave is
judged once every device in it has reported a terminal step (or the wave times out, when the silent ones
count as failed): too many failures, too high an error rate or latency halt the rollout and, if asked,
roll the devices that took the new version back to the version they ran before.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import secrets
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgewise.bundle.archive import unpack
from edgewise.bundle.pack import verify_bundle
from edgewise.bundle.signing import SIGNATURE, TrustStore, canonical, check_signature, sign_bytes
from edgewise.errors import EdgewiseError, FleetConflict, FleetError, FleetNotFound, SignatureError
from edgewise.fleet.db import Database
from edgewise.fsutil import atomic_write
from edgewise.protocol import SETTLING_STEPS, bundle_url

log = logging.getLogger("edgewise.fleet.store")

MODEL_COLS = "name, version, sha256, size, uploaded_by, uploaded_at, signature, signed_by"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class Gate:
    max_failure_rate: float = 0.0  # failed devices / devices in the waves so far
    max_error_rate: float = 0.05  # mean inference error rate the devices report after switching
    max_latency_ms: float | None = None  # mean reported p50 latency
    wave_timeout_s: float = 600.0  # devices silent this long after their wave started count as failed

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Gate:
        d = d or {}
        if not isinstance(d, dict):
            raise FleetError("gate must be an object")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise FleetError(f"unknown gate settings: {', '.join(sorted(unknown))}")
        for k, v in d.items():
            optional = k == "max_latency_ms" and v is None
            if not optional and (isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0):
                raise FleetError(f"gate setting {k} must be a finite number >= 0, got {v!r}")
        return cls(**d)


@dataclass
class FleetStore:
    db: Database
    data_dir: Path
    fleet_key: Any  # Ed25519PrivateKey: signs assignments (devices are provisioned with its public key)
    trust: TrustStore | None = None  # release keys whose bundle signatures the registry accepts
    assignment_ttl_s: float = 3600.0
    clock: Any = field(default=time.time)
    # where devices fetch bundles: None = the authenticated device route; else a file server's base URL, or
    # a path on this server where the archives are served as static files (`<sha256>.tar`)
    bundle_url: str | None = None
    # Polls are the most frequent request: their last-seen time is kept here and written once a tick,
    # not one fsynced transaction per poll.
    _seen: dict[str, float] = field(default_factory=dict)
    # called after a commit with (device id, tag) for each device whose assignment changed; tag: the rollout
    # wave's selector when the device was assigned as one of a wave (None for a rollback, say)
    notify: Any = None
    _changed: list[tuple[str, str | None]] = field(default_factory=list)

    def _notify(self) -> None:
        changed, self._changed = self._changed, []
        if changed and self.notify is not None:
            try:
                self.notify(changed)
            except Exception:  # a notification only shortens the wait; polling still finds the change
                log.warning("fleet: device notification failed; devices find the change at their next poll",
                            exc_info=True)

    # ---- models -------------------------------------------------------------------------------------
    def add_model(self, archive: bytes, uploaded_by: str) -> dict[str, Any]:
        """Store an uploaded bundle archive; its signature status is recorded (rollouts need a valid one)."""
        sha = hashlib.sha256(archive).hexdigest()
        with tempfile.TemporaryDirectory(dir=self.data_dir) as tmp:
            (Path(tmp) / "a.tar").write_bytes(archive)
            try:
                bundle = unpack(Path(tmp) / "a.tar", Path(tmp) / "b")
                manifest = verify_bundle(bundle)
            except EdgewiseError as e:
                raise FleetError(f"upload is not a valid bundle: {e}") from e
            try:
                signed_by, status = check_signature(bundle, manifest, self.trust or TrustStore()), "valid"
            except SignatureError as e:
                signed_by, status = None, "unsigned" if not (bundle / SIGNATURE).exists() else f"invalid: {e}"
        dest = self.data_dir / "models" / f"{sha}.tar"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self.db.tx() as t:
            if t.query("SELECT 1 FROM models WHERE name=? AND version=?", (manifest.name, manifest.version)):
                raise FleetConflict(f"{manifest.name} {manifest.version} is already in the registry; bump the version")
            atomic_write(dest, archive)  # on disk before the row that names it commits
            t.execute("INSERT INTO models VALUES (?,?,?,?,?,?,?,?,?,?)",
                      (manifest.name, manifest.version, sha, len(archive), str(dest), uploaded_by, self.clock(),
                       status, signed_by, manifest.to_json()))
        return self.model(manifest.name, manifest.version)

    def _select(self, cols: str, rest: str, params: tuple = ()) -> list[dict[str, Any]]:
        """Rows as dicts keyed by the selected column names: `cols` is written once."""
        keys = [c.strip() for c in cols.split(",")]
        return [dict(zip(keys, r)) for r in self.db.query(f"SELECT {cols} {rest}", params)]

    def model(self, name: str, version: str) -> dict[str, Any]:
        rows = self._select(MODEL_COLS, "FROM models WHERE name=? AND version=?", (name, version))
        if not rows:
            raise FleetNotFound(f"no model {name} {version} in the registry")
        return rows[0]

    def models(self) -> list[dict[str, Any]]:
        return self._select(MODEL_COLS, "FROM models ORDER BY name, uploaded_at")

    def archive_path(self, sha: str) -> Path:
        rows = self.db.query("SELECT path FROM models WHERE sha256=?", (sha,))
        if not rows:
            raise FleetNotFound(f"no bundle with sha256 {sha}")
        return Path(rows[0][0])

    def assigned_bundle(self, device_id: str, sha: str) -> Path:
        """The archive of bundle `sha`, only if it was ever assigned to this device."""
        if not self.db.query("SELECT 1 FROM assignments a JOIN models m ON a.model=m.name AND a.version=m.version "
                             "WHERE a.device_id=? AND m.sha256=?", (device_id, sha)):
            raise FleetNotFound("no such bundle assigned to this device")
        return self.archive_path(sha)

    # ---- devices ------------------------------------------------------------------------------------
    def enroll_token(self, tags: list[str], ttl_s: float = 86400) -> str:
        token = secrets.token_urlsafe(24)
        self.db.execute("INSERT INTO enroll_tokens VALUES (?,?,?,?,?)",
                        (_hash(token), json.dumps(sorted(tags)), self.clock(), self.clock() + ttl_s, None))
        return token

    def enroll(self, token: str, name: str) -> dict[str, str]:
        """Trade a one-time token for a device id and secret (only the secret's hash is kept)."""
        device_id, secret = uuid.uuid4().hex, secrets.token_urlsafe(32)
        with self.db.tx() as t:
            # claimed in one statement: two server processes given the same token cannot both enrol with it
            if not t.execute("UPDATE enroll_tokens SET used_by=? WHERE token_hash=? AND used_by IS NULL AND "
                             "expires >= ?", (device_id, _hash(token), self.clock())):
                raise FleetError("enrolment token unknown, already used or expired")
            rows = t.query("SELECT tags FROM enroll_tokens WHERE token_hash=?", (_hash(token),))
            t.execute("INSERT INTO devices VALUES (?,?,?,?,?,?,?,?,?)",
                      (device_id, name[:200], _hash(secret), rows[0][0], self.clock(), self.clock(), None, None,
                       "enrolled"))
        return {"device_id": device_id, "secret": secret}

    def authenticate(self, device_id: str, secret: str) -> bool:
        rows = self.db.query("SELECT secret_hash FROM devices WHERE id=?", (device_id,))
        return bool(rows) and hmac.compare_digest(rows[0][0], _hash(secret))

    def devices(self, tag: str | None = None) -> list[dict[str, Any]]:
        """Devices (with `tag`), each with `models`: the version of each model it last reported running."""
        seen = dict(self._seen)
        with self.db.tx() as t:
            rows = t.query("SELECT id, name, tags, enrolled, last_seen, state FROM devices ORDER BY enrolled, id")
            models: dict[str, dict[str, str]] = {}
            for device_id, model, version in t.query("SELECT device_id, model, version FROM device_models "
                                                     "ORDER BY model"):
                models.setdefault(device_id, {})[model] = version
        out = [{"id": i, "name": n, "tags": json.loads(tags), "enrolled": e, "last_seen": seen.get(i, last),
                "state": state, "models": models.get(i, {})} for i, n, tags, e, last, state in rows]
        return [d for d in out if tag is None or tag in d["tags"]]

    def set_tags(self, device_id: str, tags: list[str]) -> None:
        if not self.db.execute("UPDATE devices SET tags=? WHERE id=?", (json.dumps(sorted(tags)), device_id)):
            raise FleetNotFound(f"no device {device_id}")

    def timeline(self, device_id: str, limit: int = 200) -> list[dict[str, Any]]:
        return self._select("ts, rollout_id, model, version, step, ok, detail, error_rate, latency_ms",
                            "FROM reports WHERE device_id=? ORDER BY ts DESC LIMIT ?", (device_id, limit))

    # ---- assignments --------------------------------------------------------------------------------
    def assignment(self, device_id: str, base_url: str = "") -> dict[str, Any]:
        """The device's desired state as signed metadata: per model, its newest assignment not cancelled.
        The document's serial is the device's newest of any (cancelled too), so it only ever grows."""
        self._seen[device_id] = self.clock()
        now = self.clock()
        slots: dict[str, tuple] = {}
        with self.db.tx() as t:  # a poll is the most frequent request: one transaction for its reads
            rows = t.query("SELECT serial, rollout_id, model, version, rollback, status FROM assignments "
                           "WHERE device_id=? ORDER BY serial DESC", (device_id,))
            for row in rows:
                if row[5] != "cancelled":
                    slots.setdefault(row[2], row)
            tags = t.query("SELECT tags FROM devices WHERE id=?", (device_id,))
            registry = {name: self.model(name, row[3]) for name, row in slots.items()}
        models = []
        for name, (serial, rollout_id, model, version, rollback, _) in sorted(slots.items()):
            m = registry[name]
            models.append({"serial": serial, "rollout_id": rollout_id, "model": model, "version": version,
                           "rollback": bool(rollback), "sha256": m["sha256"], "size": m["size"],
                           "url": bundle_url(base_url, m["sha256"], self.bundle_url)})
        body: dict[str, Any] = {"device_id": device_id, "issued": now, "expires": now + self.assignment_ttl_s,
                                "tags": json.loads(tags[0][0]) if tags else [],
                                "serial": rows[0][0] if rows else 0, "models": models}
        return {"assignment": body, "signature": sign_bytes(self.fleet_key, canonical(body))}

    def report(self, device_id: str, r: dict[str, Any]) -> None:
        """A device's step report. Terminal steps settle its assignment; the rollout is then re-judged."""
        step, ok = str(r.get("step", ""))[:40], bool(r.get("ok"))
        serial = r.get("serial")
        if serial is not None and (isinstance(serial, bool) or not isinstance(serial, int) or not 0 <= serial < 2**62):
            raise FleetError("serial must be the integer of the assignment being reported")
        rollout_id = None
        with self.db.tx() as t:
            if serial is not None:
                rows = t.query("SELECT rollout_id FROM assignments WHERE device_id=? AND serial=?", (device_id, serial))
                rollout_id = rows[0][0] if rows else None
            model = str(r.get("model") or "")[:200] or None
            t.execute("INSERT INTO reports (device_id, ts, rollout_id, version, step, ok, detail, error_rate, "
                      "latency_ms, model) VALUES (?,?,?,?,?,?,?,?,?,?)",
                      (device_id, self.clock(), rollout_id, str(r.get("version", ""))[:40], step, int(ok),
                       str(r.get("detail", ""))[:1000], _num(r.get("error_rate"), 0.0, 1.0),
                       _num(r.get("latency_ms"), 0.0, 1e7), model))
            status = "healthy" if step == "health" and ok else "failed" if not ok and step in SETTLING_STEPS else None
            if serial is not None and status:
                t.execute("UPDATE assignments SET status=?, detail=?, updated=? WHERE device_id=? AND serial=? "
                          "AND status='pending'", (status, str(r.get("detail", ""))[:500], self.clock(), device_id, serial))
            t.execute("UPDATE devices SET state=? WHERE id=?", (step, device_id))
            if r.get("active_version") and model:  # what the device runs of this model now
                t.execute("INSERT INTO device_models VALUES (?,?,?,?,?) ON CONFLICT (device_id, model) DO UPDATE "
                          "SET version=excluded.version, state=excluded.state, updated=excluded.updated",
                          (device_id, model, str(r["active_version"])[:40], step, self.clock()))
        if rollout_id and status:  # only a settled device can change a wave's verdict
            self.tick(rollout_id)

    # ---- rollouts -----------------------------------------------------------------------------------
    def create_rollout(self, model: str, version: str, selector: str, waves: list[float], gate: dict | None,
                       auto_rollback: bool, created_by: str) -> dict[str, Any]:
        g = Gate.from_dict(gate)  # the request's own shape first, the registry after
        if not waves or any(not 0 < w <= 100 for w in waves) or waves != sorted(waves) or waves[-1] != 100:
            raise FleetError("waves must be increasing percentages ending at 100, e.g. 1,10,50,100")
        m = self.model(model, version)
        if m["signature"] != "valid":
            raise FleetError(f"{model} {version} is not validly signed ({m['signature']}); devices would refuse it")
        rid = uuid.uuid4().hex[:12]
        with self.db.tx() as t:
            # A newer rollout of the same model to the same devices supersedes a running or stuck one.
            for (old,) in t.query("SELECT id FROM rollouts WHERE model=? AND selector=? AND state IN "
                                  "('running','paused','halted')", (model, selector)):
                t.execute("UPDATE rollouts SET state='superseded', reason=? WHERE id=?", (f"superseded by {rid}", old))
                t.execute("UPDATE assignments SET status='cancelled' WHERE rollout_id=? AND status='pending'", (old,))
            t.execute("INSERT INTO rollouts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                      (rid, model, version, selector, json.dumps(waves), json.dumps(g.__dict__), int(auto_rollback),
                       "running", -1, self.clock(), self.clock(), created_by, ""))
        self.tick(rid)
        return self.rollout(rid)

    def rollout(self, rid: str) -> dict[str, Any]:
        rows = self._select("id, model, version, selector, waves, gate, auto_rollback, state, wave, wave_started, "
                            "created, created_by, reason", "FROM rollouts WHERE id=?", (rid,))
        if not rows:
            raise FleetNotFound(f"no rollout {rid}")
        r = rows[0]
        r["waves"], r["gate"], r["auto_rollback"] = json.loads(r["waves"]), json.loads(r["gate"]), bool(r["auto_rollback"])
        counts: dict[str, int] = {}
        for status, rollback, n in self.db.query("SELECT status, rollback, COUNT(*) FROM assignments WHERE rollout_id=? "
                                                 "GROUP BY status, rollback", (rid,)):
            key = f"rollback_{status}" if rollback else status
            counts[key] = counts.get(key, 0) + n
        r["devices"] = counts
        r["targeted"] = len(self.devices(r["selector"]))
        return r

    def rollouts(self) -> list[dict[str, Any]]:
        return [self.rollout(r[0]) for r in self.db.query("SELECT id FROM rollouts ORDER BY created DESC")]

    def control(self, rid: str, action: str, reason: str = "") -> dict[str, Any]:
        """Operator actions: pause, resume, abort, rollback. Any non-final rollout can be aborted."""
        r = self.rollout(rid)
        allowed = {"pause": ("running",), "resume": ("paused", "halted"), "abort": ("running", "paused", "halted"),
                   "rollback": ("running", "paused", "halted", "completed", "aborted")}
        if action not in allowed:
            raise FleetError(f"unknown action {action!r}: pause, resume, abort or rollback")
        if r["state"] not in allowed[action]:
            raise FleetConflict(f"cannot {action} a rollout that is {r['state']}")
        new = {"pause": "paused", "resume": "running", "abort": "aborted", "rollback": "rolled_back"}[action]
        with self.db.tx() as t:
            t.execute("UPDATE rollouts SET state=?, reason=? WHERE id=?", (new, reason or f"{action} by operator", rid))
            if action in ("abort", "rollback"):
                t.execute("UPDATE assignments SET status='cancelled' WHERE rollout_id=? AND status='pending' "
                          "AND rollback=0", (rid,))
            if action == "rollback":
                missed = self._issue_rollbacks(t, rid)
                if missed:
                    t.execute("UPDATE rollouts SET reason=? WHERE id=?",
                              (f"{reason or 'rollback by operator'}; {missed}", rid))
        self._notify()
        if action == "resume":
            self.tick(rid)
        return self.rollout(rid)

    def flush_seen(self) -> None:
        seen, self._seen = self._seen, {}
        if seen:
            with self.db.tx() as t:
                for device_id, ts in seen.items():
                    t.execute("UPDATE devices SET last_seen=? WHERE id=?", (ts, device_id))

    def tick_all(self) -> None:
        self.flush_seen()
        for (rid,) in self.db.query("SELECT id FROM rollouts WHERE state='running'"):
            self.tick(rid)

    def tick(self, rid: str) -> None:
        """Advance one rollout: start the first wave, judge a finished wave, start the next or halt."""
        try:
            again = self._tick(rid)
        finally:
            self._notify()
        if again:
            self.tick(rid)  # an empty wave (nobody new) is judged at once

    def _tick(self, rid: str) -> bool:
        with self.db.tx() as t:
            # locked till this transaction ends: another server process ticking the same rollout waits, then
            # sees the wave this one started (a wave is never judged or advanced twice)
            row = t.query("SELECT model, version, selector, waves, gate, auto_rollback, state, wave, wave_started "
                          "FROM rollouts WHERE id=?" + t.for_update, (rid,))
            if not row or row[0][6] != "running":
                return False
            model, version, selector, waves, gate, auto_rb, _, wave, started = row[0]
            waves, g = json.loads(waves), Gate.from_dict(json.loads(gate))
            if wave >= 0:
                verdict = self._judge(t, rid, g, started)
                if verdict is None:
                    return False  # wave still in progress
                if verdict:
                    t.execute("UPDATE rollouts SET state='halted', reason=? WHERE id=?", (verdict, rid))
                    if auto_rb:
                        t.execute("UPDATE assignments SET status='cancelled' WHERE rollout_id=? AND "
                                  "status='pending' AND rollback=0", (rid,))
                        missed = self._issue_rollbacks(t, rid)
                        t.execute("UPDATE rollouts SET state='rolled_back', reason=? WHERE id=?",
                                  (f"{verdict}; rolled back automatically" + (f"; {missed}" if missed else ""), rid))
                    return False
                if wave == len(waves) - 1:
                    t.execute("UPDATE rollouts SET state='completed' WHERE id=?", (rid,))
                    return False
            wave += 1
            self._assign_wave(t, rid, model, version, selector, waves[wave])
            t.execute("UPDATE rollouts SET wave=?, wave_started=? WHERE id=?", (wave, self.clock(), rid))
        return True

    def _assign_wave(self, t: Any, rid: str, model: str, version: str, selector: str, pct: float) -> None:
        targets = sorted((d for d in self.devices(selector)),
                         key=lambda d: hashlib.sha256(f"{rid}:{d['id']}".encode()).hexdigest())
        # At least one device per wave (a 1% canary of 50 devices is one device), rounded to the nearest.
        take = targets[:min(len(targets), max(1, int(len(targets) * pct / 100 + 0.5)))]
        have = {r[0] for r in t.query("SELECT device_id FROM assignments WHERE rollout_id=?", (rid,))}
        take = [d for d in take if d["id"] not in have]
        self._lock_devices(t, [d["id"] for d in take])
        for d in take:
            running = d["models"].get(model)  # this model's version there: the device's other models stay
            status = "healthy" if running == version else "pending"
            self._assign(t, d["id"], rid, model, version, False, status, "", running, model, tag=selector)

    def _lock_devices(self, t: Any, ids: list[str]) -> None:
        """Lock these devices' rows till the transaction ends, in id order: a device's next serial is its
        MAX + 1, and two rollouts (of two models, say) assigning the same device at once in two server
        processes would both take the same serial. One order everywhere, so two such locks never deadlock."""
        if not t.for_update:
            return  # SQLite: one writer at a time already
        ids = sorted(set(ids))
        for i in range(0, len(ids), 1000):
            chunk = ids[i:i + 1000]
            t.query(f"SELECT id FROM devices WHERE id IN ({','.join('?' * len(chunk))}) ORDER BY id" + t.for_update,
                    chunk)

    def _assign(self, t: Any, device_id: str, rid: str, model: str, version: str, rollback: bool, status: str,
                detail: str, prev_version: str | None, prev_model: str | None = None, tag: str | None = None) -> None:
        """A new desired state for one of a device's models: the device's next serial, so it supersedes every
        earlier assignment of that model (its other models keep theirs)."""
        serial = (t.query("SELECT MAX(serial) FROM assignments WHERE device_id=?", (device_id,))[0][0] or 0) + 1
        t.execute("INSERT INTO assignments (device_id, serial, rollout_id, model, version, rollback, status, detail, "
                  "updated, prev_version, prev_model) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                  (device_id, serial, rid, model, version, int(rollback), status, detail, self.clock(), prev_version,
                   prev_model))
        self._changed.append((device_id, tag))

    def _judge(self, t: Any, rid: str, g: Gate, started: float) -> str | None:
        """None while the wave runs; '' when it passed; the reason when it failed."""
        counts = dict(t.query("SELECT status, COUNT(*) FROM assignments WHERE rollout_id=? AND rollback=0 "
                              "GROUP BY status", (rid,)))
        pending = counts.get("pending", 0)
        live = sum(n for s, n in counts.items() if s != "cancelled")
        if pending and self.clock() - started < g.wave_timeout_s:
            return None
        failed = counts.get("failed", 0) + pending
        if live and failed / live > g.max_failure_rate:
            return (f"{failed} of {live} devices failed" + (f" ({pending} silent past the "
                                                             f"{g.wave_timeout_s:.0f} s wave timeout)" if pending else ""))
        # Each device weighs once, however often it reports (rates are clamped to [0, 1] when stored).
        err, lat = t.query("SELECT AVG(e), AVG(l) FROM (SELECT AVG(error_rate) AS e, AVG(latency_ms) AS l FROM reports "
                           "WHERE rollout_id=? AND step='health' AND ok=1 GROUP BY device_id) AS per_device", (rid,))[0]
        if err is not None and err > g.max_error_rate:
            return f"mean error rate {err:.3f} over the gate's {g.max_error_rate}"
        if g.max_latency_ms is not None and lat is not None and lat > g.max_latency_ms:
            return f"mean latency {lat:.1f} ms over the gate's {g.max_latency_ms} ms"
        return ""

    def _issue_rollbacks(self, t: Any, rid: str) -> str:
        """Every device that took this rollout's version goes back to the version of that model it ran
        before, by a signed rollback assignment (the only way a device accepts an older version); its other
        models are not touched. A device that did not run the model before is left on it, and counted.
        Devices that failed are already back on their previous model: the updater never leaves a failed
        install active. Returns what could not be restored, for the rollout's reason ('' when all were)."""
        rows = t.query("SELECT device_id, prev_version, prev_model, model FROM assignments WHERE rollout_id=? "
                       "AND rollback=0 AND status='healthy'", (rid,))
        self._lock_devices(t, [r[0] for r in rows])
        missing: dict[str, int] = {}
        for device_id, prev, prev_model, model in rows:
            prev_model = prev_model or model  # assignments from before prev_model was recorded
            if not prev:
                why = f"no earlier version of {prev_model} on record"
                missing[why] = missing.get(why, 0) + 1
                continue
            try:
                self.model(prev_model, prev)
            except FleetError:
                why = f"{prev_model} {prev} is not in the registry"
                missing[why] = missing.get(why, 0) + 1
                continue
            self._assign(t, device_id, rid, prev_model, prev, True, "pending", "rollback", None)
        return "; ".join(f"{n} device(s) could not be rolled back: {why}" for why, n in missing.items())


def _num(v: Any, low: float, high: float) -> float | None:
    """A reported figure as a finite float clamped to [low, high]; anything else is no figure."""
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        return None
    try:
        f = float(v)
    except (ValueError, OverflowError):
        return None
    return min(max(f, low), high) if math.isfinite(f) else None

