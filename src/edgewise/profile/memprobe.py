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


def main(path: str, threads: int, batch: int) -> None:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    # Reset the high-water mark so imports do not count (Linux: writing 5 to clear_refs).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [batch] + [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape[1:]]
    dtype = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}.get(inp.type, np.float32)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    after_load = _status_kb("VmRSS")
    for _ in range(5):
        sess.run(None, {inp.name: x})
    peak = _status_kb("VmHWM")
    print(json.dumps({"rss_delta_bytes": (peak - before) * 1024, "load_delta_bytes": (after_load - before) * 1024}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
