"""Video streams on one agent: 1 and then 4 streams of 640x480 video at 5 fps each, answered by an int8
YOLOv8n (160x160, from the corpus), in a real agent process.

Per run: frames answered per second per stream, latency from frame decode to answer queued (p50/p99),
the share of sampled frames dropped, and the agent's RSS (4 streams against 1: one model instance shared).

Run: .venv/bin/python benchmarks/bench_streams.py [--seconds 20]   (needs ffmpeg; writes the 'streams' section)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, cpu_flags, machine, table, write_section  # noqa: E402

from edgewise.optimize.pipeline import optimize  # noqa: E402
from edgewise.optimize.search import SearchOptions  # noqa: E402
from edgewise.targets import load_target  # noqa: E402
from edgewise.zoo import corpus  # noqa: E402


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bundle() -> Path:
    out = WORK / "streams-yolo"
    if not (out / "bundle").is_dir():
        model, data = corpus.build("yolov8n", WORK / "streams-model")
        optimize(model, data, load_target("edge-node"), out,
                 SearchOptions(only=("baseline-int8-minmax",), measure_memory=False, sensitivity_max_layers=0))
    return out / "bundle"


def clip(seconds: float) -> Path:
    path = WORK / f"clip-{seconds:g}s.mp4"
    if not path.exists():
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                        f"testsrc2=size=640x480:rate=25:duration={seconds}", "-pix_fmt", "yuv420p", str(path)],
                       check=True)
    return path


def run(n: int, b: Path, video: Path, seconds: float) -> dict:
    port = _port()
    args = [sys.executable, "-m", "edgewise.cli", "agent", "--bundle", str(b), "--tier", "server", "--port",
            str(port), "--data-dir", str(WORK / f"streams-agent-{n}"), "--fps", "5"]
    for i in range(n):
        args += ["--stream", f"cam{i}={video}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1/streams"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            break
        except OSError:
            time.sleep(0.2)
    time.sleep(seconds + 2)
    streams = json.loads(urllib.request.urlopen(url, timeout=5).read())
    rss = 0
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            rss = int(line.split()[1]) * 1024
    proc.kill()
    proc.wait()
    fps = [s["inferences"] / seconds for s in streams.values()]
    dropped = sum(s["frames_dropped"] for s in streams.values()) / max(1, sum(s["frames_sampled"] for s in streams.values()))
    p50 = max(s["latency_p50_ms"] or 0 for s in streams.values())
    p99 = max(s["latency_p99_ms"] or 0 for s in streams.values())
    return {"streams": n, "fps": fps, "dropped": dropped, "p50": p50, "p99": p99, "rss": rss}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()
    b, video = bundle(), clip(args.seconds)
    rows, res = [], {}
    for n in (1, 4):
        r = run(n, b, video, args.seconds)
        res[n] = r
        print(r, flush=True)
        rows.append([n, f"{min(r['fps']):.2f}-{max(r['fps']):.2f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}",
                     f"{r['dropped'] * 100:.1f}%", f"{r['rss'] / 2**20:.0f} MB"])
    ratio = res[4]["rss"] / res[1]["rss"]
    md = (f"Machine: {machine()}; CPU flags: {cpu_flags()}. A real agent process, int8 YOLOv8n (corpus, 160x160), "
          f"640x480 clips at 25 fps sampled at 5 fps per stream, played in real time for {args.seconds:g} s; "
          "latency from frame decode to the answer queued, the worst stream's.\n\n"
          + table(["streams", "answers/s per stream", "p50 ms", "p99 ms", "frames dropped", "peak RSS"], rows)
          + f"\n\nRSS with 4 streams: {ratio:.2f}x that of 1 (goal <= 1.3x: one model instance).")
    write_section("streams", md)


if __name__ == "__main__":
    main()
