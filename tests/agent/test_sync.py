"""Store-and-forward end to end: a real receiver process over loopback, killed and restarted mid-stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from edgewise.agent.forward.queue import DurableQueue, NewItem
from edgewise.agent.forward.receiver import EventStore
from edgewise.agent.forward.sync import Syncer, next_backoff
from edgewise.agent.forward.upstream import HttpUpstream, InProcessUpstream, UpstreamUnavailable

from ..harness import free_port, wait_for


def start_receiver(db: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "edgewise.sim.receiver", str(db), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode())
            time.sleep(0.1)
    raise RuntimeError("receiver did not start")


def test_link_down_then_back_without_restart_resumes_by_itself(tmp_path):
    # Prepare
    queue = DurableQueue(tmp_path / "q.db")
    store = EventStore(tmp_path / "events.db")
    up = InProcessUpstream(store)
    up.online = False
    syncer = Syncer(queue, up, batch=7, base_backoff_s=0.01, max_backoff_s=0.05).start()
    # Execute: produce while offline, then the link returns
    keys = queue.append_many([NewItem(f"e{i}".encode()) for i in range(40)])
    syncer.notify()
    wait_for(lambda: syncer.stats.failures > 0)
    assert len(store) == 0 and len(queue) == 40
    up.online = True
    wait_for(lambda: len(store) == 40)
    syncer.stop()
    # Assert
    assert store.keys() == keys and len(queue) == 0


def test_restart_while_offline_then_link_returns(tmp_path):
    queue = DurableQueue(tmp_path / "q.db")
    keys = queue.append_many([NewItem(b"x") for _ in range(25)])
    queue.close()  # the agent restarts while the link is still down
    queue = DurableQueue(tmp_path / "q.db")
    store = EventStore(tmp_path / "events.db")
    syncer = Syncer(queue, InProcessUpstream(store), base_backoff_s=0.01).start()
    wait_for(lambda: len(store) == 25)
    syncer.stop()
    assert store.keys() == keys


@pytest.mark.e2e
def test_receiver_killed_and_restarted_mid_stream_gets_everything_exactly_once(tmp_path):
    # Prepare: a real receiver process over loopback
    port = free_port()
    events_db = tmp_path / "server-events.db"
    server = start_receiver(events_db, port)
    queue = DurableQueue(tmp_path / "q.db")
    syncer = Syncer(queue, HttpUpstream(f"http://127.0.0.1:{port}", timeout_s=2), batch=50,
                    base_backoff_s=0.05, max_backoff_s=0.5).start()
    keys: list[str] = []
    try:
        # Execute: stream events, kill -9 the receiver mid-stream, keep producing, restart it
        for burst in range(20):
            keys += queue.append_many([NewItem(json.dumps({"n": len(keys) + j}).encode()) for j in range(25)])
            syncer.notify()
            time.sleep(0.01)
            if burst == 8:
                os.kill(server.pid, signal.SIGKILL)
                server.wait()
        time.sleep(0.3)
        assert syncer.stats.failures > 0, "the sync noticed the dead link"
        server = start_receiver(events_db, port)
        wait_for(lambda: len(queue) == 0)
    finally:
        syncer.stop()
        server.kill()
        server.wait()
    # Assert: every event arrived, none twice
    received = EventStore(events_db).keys()
    assert sorted(received) == sorted(keys) and len(received) == len(set(received)) == 500


def test_malformed_batches_get_400_and_the_server_stays_up(tmp_path):
    port = free_port()
    server = start_receiver(tmp_path / "e.db", port)
    try:
        for body in (b"not json", b'{"events": 3}', b'{"events": [{"key": "k"}]}', b"\x1f\x8b broken gzip",
                     b'{"events": [{"key": "k", "topic": "t", "payload": "%%%"}]}'):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/events", data=body, method="POST")
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=5)
            assert e.value.code == 400 and b"malformed" in e.value.read()
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "edgewise_received_malformed_total 5" in metrics
    finally:
        server.kill()
        server.wait()


def test_unreachable_upstream_is_a_retryable_error(tmp_path):
    up = HttpUpstream(f"http://127.0.0.1:{free_port()}", timeout_s=0.5)
    with pytest.raises(UpstreamUnavailable, match="unreachable"):
        up.deliver([])


def test_backoff_grows_with_jitter_and_is_capped():
    import random

    rng = random.Random(0)
    b, seen = 0.0, []
    for _ in range(12):
        b = next_backoff(b, 0.1, 2.0, rng)
        seen.append(b)
    assert all(0.1 <= x <= 2.0 for x in seen) and seen[-1] == 2.0, "grows to the cap and stays there"
    below = [x for x in seen if x < 2.0]
    assert len(set(below)) == len(below) and seen[0] < 0.4, "jittered, starting near the base"
