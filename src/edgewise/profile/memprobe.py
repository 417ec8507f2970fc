"""Child process for measure_memory: load one model, run it, print RSS figures as JSON."""

from __future__ import annotations

import json
import sys


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main(path: str, threads: int, batch: int, feed_path: str = "") -> None:
    import numpy as np
    import onnxruntime as ort

    from edgewise.profile.feeds import cast_feed, random_feed, session_inputs

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    feed = dict(np.load(feed_path)) if feed_path else None
    # Reset the high-water mark so imports do not count (Linux: writing 5 to clear_refs).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    specs = session_inputs(sess)
    if feed is not None:
        feed = cast_feed(specs, feed)
    else:
        feed = random_feed(specs)
        if batch > 1 and len(specs) == 1 and not specs[0].fixed_batch:
            feed = {k: np.repeat(v, batch, axis=0) for k, v in feed.items()}
    after_load = _status_kb("VmRSS")
    for _ in range(5):
        sess.run(None, feed)
    peak = _status_kb("VmHWM")
    print(json.dumps({"rss_delta_bytes": (peak - before) * 1024, "load_delta_bytes": (after_load - before) * 1024}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "")
