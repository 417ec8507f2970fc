import os
import signal
import subprocess
import sys
import time

import pytest

from edgewise.agent.forward.queue import DurableQueue, NewItem
from edgewise.errors import AgentError, QueueFull, StorageError


def test_append_peek_ack_in_priority_then_age_order(tmp_path):
    # Prepare
    q = DurableQueue(tmp_path / "q.db")
    # Execute
    a = q.append(b"a")
    b = q.append(b"b", priority=5)
    c = q.append(b"c")
    items = q.peek(10)
    q.ack([b, a, "unknown"])
    # Assert
    assert [i.key for i in items] == [b, a, c]
    assert [i.payload for i in q.peek(10)] == [b"c"]
    assert q.stats()["acked"] == 2 and q.stats()["appended"] == 3


def test_appending_the_same_key_twice_stores_it_once(tmp_path):
    q = DurableQueue(tmp_path / "q.db")
    q.append_many([NewItem(b"x", key="k1"), NewItem(b"x", key="k1"), NewItem(b"y", key="k2")])
    assert len(q) == 2 and q.stats()["appended"] == 2


def test_survives_reopen(tmp_path):
    q = DurableQueue(tmp_path / "q.db")
    keys = q.append_many([NewItem(str(i).encode()) for i in range(50)])
    q.close()
    q2 = DurableQueue(tmp_path / "q.db")
    assert [i.key for i in q2.peek(100)] == keys and q2.stats()["bytes"] == sum(len(str(i)) for i in range(50))


def test_full_queue_drops_oldest_and_counts_it(tmp_path):
    q = DurableQueue(tmp_path / "q.db", max_bytes=100, when_full="drop-oldest")
    for i in range(15):
        q.append(bytes(10), key=f"k{i}")
    assert len(q) == 10 and q.peek(1)[0].key == "k5"
    assert q.stats()["dropped_full"] == 5


def test_full_queue_refuses_and_counts_it(tmp_path):
    q = DurableQueue(tmp_path / "q.db", max_bytes=30, when_full="refuse")
    q.append_many([NewItem(bytes(10)) for _ in range(3)])
    with pytest.raises(QueueFull, match="refuse"):
        q.append(bytes(10))
    assert len(q) == 3 and q.stats()["refused_full"] == 1
    with pytest.raises(AgentError):
        DurableQueue(tmp_path / "x.db", when_full="shrug")


def test_ttl_and_age_expiry_are_counted(tmp_path):
    q = DurableQueue(tmp_path / "q.db", max_age_s=0.2)
    q.append(b"short", ttl_s=0.05)
    q.append(b"long")
    time.sleep(0.1)
    assert [i.payload for i in q.peek(10)] == [b"long"] and q.stats()["expired"] == 1
    time.sleep(0.15)
    q.append(b"new")
    assert [i.payload for i in q.peek(10)] == [b"new"] and q.stats()["expired_age"] == 1


def test_full_disk_is_an_error_and_loses_nothing_already_stored(tmp_path):
    # SQLite's max_page_count caps the file like a full disk does: the real SQLITE_FULL path.
    q = DurableQueue(tmp_path / "q.db", max_pages=12)
    stored = []
    with pytest.raises(StorageError, match="disk full"):
        for i in range(1000):
            stored += q.append_many([NewItem(os.urandom(200), key=f"k{i}")])
    assert [i.key for i in q.peek(2000)] == stored
    q.ack(stored[:3])
    assert len(q) == len(stored) - 3


_WRITER = """
import sys
from edgewise.agent.forward.queue import DurableQueue, NewItem
q = DurableQueue(sys.argv[1])
i = 0
while True:
    keys = q.append_many([NewItem(b"e", key=f"k{i + j}") for j in range(50)])
    i += 50
    print(keys[-1], flush=True)  # acknowledged: durable
"""


def test_kill_9_during_a_burst_loses_nothing_acknowledged(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / "q.db")], stdout=subprocess.PIPE, text=True)
    acked = []
    while len(acked) < 40:
        acked.append(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    keys = {i.key for i in DurableQueue(tmp_path / "q.db").peek(100_000)}
    last = int(acked[-1][1:])
    assert all(f"k{i}" in keys for i in range(last + 1)), "every acknowledged item survived kill -9"
