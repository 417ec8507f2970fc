"""Background sync: drain the durable queue upstream in batches, back off with jitter while the link is down.

Items leave the queue only after the upstream confirmed storing them, so a crash at any point means
at most a redelivery, which the receiver de-duplicates by key.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass

from edgewise.agent.forward.queue import DurableQueue
from edgewise.agent.forward.upstream import Upstream, UpstreamUnavailable
from edgewise.errors import AgentError, StorageError

log = logging.getLogger("edgewise.agent.forward.sync")


@dataclass
class SyncStats:
    sent: int = 0
    batches: int = 0
    failures: int = 0
    rejected_batches: int = 0
    last_error: str = ""
    backoff_s: float = 0.0
    online: bool = True
    storage_errors: int = 0  # a local write (the audit log) failed, e.g. a full disk: nothing was sent
    unexpected_errors: int = 0
    failing: str = ""  # what the last attempt ran into until one succeeds: link | refused | storage | unexpected


def next_backoff(current: float, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with "decorrelated" jitter: uniform in [base, 3 * previous], capped.

    Grows about 2x per failure on average, and devices that lost the link together spread out instead
    of reconnecting in lockstep."""
    return min(cap, rng.uniform(base, max(base, current) * 3))


class Syncer:
    def __init__(self, queue: DurableQueue, upstream: Upstream, batch: int = 500, base_backoff_s: float = 0.1,
                 max_backoff_s: float = 30.0, idle_poll_s: float = 1.0, linger_s: float = 0.25,
                 seed: int | None = None) -> None:
        self.queue, self.upstream, self.batch, self.linger_s = queue, upstream, batch, linger_s
        self.base, self.cap, self.idle_poll_s = base_backoff_s, max_backoff_s, idle_poll_s
        self.stats = SyncStats()
        self._rng = random.Random(seed)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def notify(self) -> None:
        """Something was queued: drain now rather than at the next poll."""
        self._wake.set()

    def drain_once(self) -> int:
        """Send one batch; returns how many items left the queue (0 when empty or the link is down)."""
        items = self.queue.peek(self.batch)
        if not items:
            return 0
        try:
            self.upstream.deliver(items)
        except UpstreamUnavailable as e:
            self.stats.failures += 1
            self.stats.online = False
            self.stats.last_error, self.stats.failing = str(e), "link"
            raise
        except StorageError as e:
            self.stats.storage_errors += 1
            self.stats.last_error, self.stats.failing = str(e), "storage"
            raise
        except AgentError as e:  # the receiver refused this batch as malformed: keep it, say so
            self.stats.rejected_batches += 1
            self.stats.last_error, self.stats.failing = str(e), "refused"
            raise
        self.stats.failing = ""
        self.queue.ack(i.key for i in items)
        self.stats.sent += len(items)
        self.stats.batches += 1
        self.stats.online = True
        self.stats.backoff_s = 0.0
        return len(items)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                while self.drain_once() and not self._stop.is_set():
                    pass
                self._wake.wait(self.idle_poll_s)
                self._wake.clear()
                # Linger so that events arriving together travel together: fewer, fuller, better
                # compressed batches, for a quarter second of added delivery latency.
                self._stop.wait(self.linger_s)
            except AgentError:
                self._back_off()
            except Exception as e:  # noqa: BLE001 - the sync thread must outlive any one failure
                self.stats.unexpected_errors += 1
                self.stats.last_error, self.stats.failing = f"{type(e).__name__}: {e}", "unexpected"
                log.exception("sync: unexpected error; retrying after backoff")
                self._back_off()

    def _back_off(self) -> None:
        self.stats.backoff_s = next_backoff(self.stats.backoff_s, self.base, self.cap, self._rng)
        self._stop.wait(self.stats.backoff_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Syncer:
        self._thread = threading.Thread(target=self.run, name="edgewise-sync", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
