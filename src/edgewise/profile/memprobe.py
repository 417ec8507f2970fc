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


def _session(path: str, threads: int):  # type: ignore[no-untyped-def]
    """The model on the runtime its metadata names: ONNX Runtime's CPU provider, or OpenVINO running the IR
    saved beside it (`<stem>.xml`, `<stem>.bin`) or else its ONNX graph."""
    from pathlib import Path

    import onnx

    from edgewise.profile.openvino import ir_key, parse_runtime, runtime_of

    meta = onnx.load(path, load_external_data=False)
    runtime = runtime_of(meta)
    if not runtime.startswith("openvino"):  # as make_session dispatches; ORT here on the CPU, whatever it pins
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        return lambda: ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    import openvino  # noqa: F401 - imported before the count starts, as onnxruntime is: a library, not the model

    from edgewise.profile.openvino import OpenVinoSession

    device, precision = parse_runtime(runtime)
    xml, weights = Path(path).with_suffix(".xml"), Path(path).with_suffix(".bin")
    ir = None
    if ir_key(meta):
        if not (xml.exists() and weights.exists()):
            raise SystemExit(f"the model runs an OpenVINO IR that is not beside it ({xml.name}, {weights.name})")
        ir = (xml.read_bytes(), weights.read_bytes())
    data = Path(path).read_bytes()
    del meta
    return lambda: OpenVinoSession(data, device, threads, precision, ir=ir)


def main(path: str, threads: int, batch: int, feed_path: str = "") -> None:
    import numpy as np

    from edgewise.profile.feeds import cast_feed, random_feed, session_inputs
    from edgewise.profile.runtime import running_on

    feed = dict(np.load(feed_path)) if feed_path else None
    start = _session(path, threads)
    # Reset the high-water mark so imports do not count (Linux: writing 5 to clear_refs).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    sess = start()
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
    print(json.dumps({"rss_delta_bytes": (peak - before) * 1024, "load_delta_bytes": (after_load - before) * 1024,
                      "running_on": running_on(sess)}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "")
