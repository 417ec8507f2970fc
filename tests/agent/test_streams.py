"""Video streams: two sources (a file made with ffmpeg, and an RTSP stream an ffmpeg "camera" pushes to the
agent on loopback) answered by one detector; the camera is killed mid-run and restarted. Detections are queued and
delivered; frames never leave; the stream reconnects by itself. (ffmpeg from Debian: .ci/run installs it.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edgewise.agent.forward.receiver import EventStore
from edgewise.agent.runner import AgentConfig, build_agent

from ..harness import AgentProc, free_port, wait_for
from .test_images import detector_bundle

pytestmark = pytest.mark.e2e
if shutil.which("ffmpeg") is None:
    pytest.skip("ffmpeg not installed (see .ci/run)", allow_module_level=True)


def _video(path: Path, seconds: int = 4) -> Path:
    """640x480 at 10 fps: ffmpeg's test pattern with a moving box composited on it."""
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=640x480:rate=10:duration={seconds}", "-vf",
                    "drawbox=x='mod(t*80,560)':y=200:w=80:h=60:color=red:t=fill", "-pix_fmt", "yuv420p",
                    str(path)], check=True, timeout=60)
    return path


class RtspCamera:
    """ffmpeg as an RTSP camera that pushes a looped clip to the agent (which listens: rtsp-listen://)."""

    def __init__(self, video: Path, port: int) -> None:
        self.video, self.port = video, port
        self.url = f"rtsp://127.0.0.1:{port}/live"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RtspCamera:
        """Push until the agent takes it (it may still be between two listens)."""
        deadline = time.time() + 30
        while time.time() < deadline:
            self.proc = subprocess.Popen(["ffmpeg", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i",
                                          str(self.video), "-c", "copy", "-f", "rtsp", "-rtsp_transport", "tcp",
                                          self.url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                self.proc.wait(2)  # exited at once: nobody listening yet
            except subprocess.TimeoutExpired:
                return self
            time.sleep(0.5)
        raise RuntimeError("the agent never took the RTSP push")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def detector(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("streams")
    return detector_bundle(root).bundle, _video(root / "clip.mp4")


def test_two_streams_one_model_detections_queued_and_a_cut_stream_comes_back(detector, tmp_path):
    bundle, video = detector
    rtsp = RtspCamera(video, free_port())
    upstream = AgentProc(["--tier", "server"], free_port(), tmp_path / "up").start()
    agent = build_agent(AgentConfig(bundles=[bundle], tier="node", data_dir=tmp_path / "node", upstream=upstream.url,
                                    streams=[f"door={video}", f"yard=rtsp-listen://127.0.0.1:{rtsp.port}/live"],
                                    stream_fps=5))
    try:
        door, yard = agent.streams
        rtsp.start()
        wait_for(lambda: yard.stats.inferences >= 5, timeout=60)
        # Execute: the RTSP server dies mid-stream, then comes back
        rtsp.kill()
        wait_for(lambda: yard.stats.state == "reconnecting", timeout=30)
        before = yard.stats.inferences
        rtsp.start()
        wait_for(lambda: yard.stats.inferences >= before + 5, timeout=60)
        wait_for(lambda: door.stats.state == "ended", timeout=60)
        client = TestClient(agent.app)
        streams = client.get("/v1/streams").json()
        metrics = client.get("/metrics").text
        yard.stop()  # a live stream keeps queueing; stop it so that "all delivered" has a fixed count
        wait_for(lambda: agent.queue.stats()["depth"] == 0, timeout=60)
    finally:
        agent.close()
        rtsp.kill()
        upstream.kill()
    # Assert: one model for both streams, frames sampled at ~5 fps, answers delivered upstream, frames never
    assert len(agent.inference.models.health()["loaded"]) == 1
    assert door.stats.inferences >= 12  # a 4 s file at 5 fps in real time
    assert yard.stats.reconnects >= 1 and streams["yard"]["state"] == "connected"
    boxes = streams["door"]["recent"][-1]["boxes"]
    # 640x480 letterboxed at 0.25 with 20 px above: frame box (60, 50, 100, 70) -> (240, 120, 400, 200)
    assert boxes[0]["label"] == "kite" and boxes[0]["box"] == [240.0, 120.0, 400.0, 200.0]
    events = [json.loads(p) for p in EventStore(tmp_path / "up" / "events.db").payloads()]
    detections = [e for e in events if "stream" in e]
    assert {e["stream"] for e in detections} == {"door", "yard"}
    assert all(set(e) <= {"stream", "m", "t", "ts", "boxes", "image_size"} for e in detections), "no frames"
    assert len(detections) == door.stats.results_queued + yard.stats.results_queued
    assert 'edgewise_stream_frames_dropped_total{stream="yard"}' in metrics
