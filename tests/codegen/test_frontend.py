"""The audio front end in C against its NumPy reference, and a keyword model compiled with it: raw PCM in,
a class out, on the host build of the generated C."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from edgewise.codegen.frontend import emit_audio_frontend, quantize_reference
from edgewise.media.audio import AudioSpec, features

from ..harness import build_host, tone, tone_clips, tone_recording, wav_bytes

MAIN = """#include <stdio.h>
#include "ew_frontend.h"
int main(void)
{
    static int16_t pcm[EW_FE_CLIP_SAMPLES];
    static int8_t out[EW_FE_FEATURES];
    while (fread(pcm, sizeof(int16_t), EW_FE_CLIP_SAMPLES, stdin) == EW_FE_CLIP_SAMPLES) {
        ew_frontend_features(pcm, out);
        fwrite(out, 1, EW_FE_FEATURES, stdout);
    }
    return 0;
}
"""


def _clips(spec: AudioSpec, n: int = 60) -> np.ndarray:
    """int16 clips: chords of tones, chirps, noise bursts and near-silence (the hard case for the log)."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        x = np.zeros(spec.clip_samples, np.float32)
        for _ in range(int(rng.integers(1, 4))):
            x += tone(float(rng.uniform(80, 7000)), spec.sample_rate, amp=float(rng.uniform(0.01, 0.3)))[: len(x)]
        if i % 3 == 0:
            start = int(rng.integers(0, len(x) // 2))
            x[start : start + 3000] += rng.normal(0, rng.uniform(0.01, 0.3), 3000).astype(np.float32)
        if i % 10 == 0:
            x *= 1e-4
        out.append(np.clip(np.round(np.clip(x, -1, 1) * 32768), -32768, 32767).astype(np.int16))
    return np.stack(out)


@pytest.mark.parametrize("mfcc", [0, 10])
def test_c_features_match_the_numpy_reference_within_one_step(tmp_path, mfcc):
    spec = AudioSpec(mfcc=mfcc)
    pcm = _clips(spec)
    ref = np.stack([features(c.astype(np.float32) / 32768, spec) for c in pcm])
    lo, hi = float(ref.min()), float(ref.max())
    scale = (hi - lo) / 255
    zp = int(round(-128 - lo / scale))
    src = {**emit_audio_frontend(spec, scale, zp), "main.c": MAIN}
    for name, text in src.items():
        (tmp_path / name).write_text(text)
    exe = tmp_path / "fe"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-o", str(exe),
                    str(tmp_path / "ew_frontend.c"), str(tmp_path / "main.c"), "-lm"], check=True)
    out = subprocess.run([str(exe)], input=pcm.tobytes(), capture_output=True, check=True, timeout=60).stdout
    got = np.frombuffer(out, np.int8).reshape(ref.shape).astype(int)
    diff = np.abs(got - quantize_reference(ref, scale, zp).astype(int))
    print(f"mfcc={mfcc}: {(diff == 0).mean():.6f} exact, {(diff <= 1).mean():.6f} within one step, max {diff.max()}")
    assert (diff <= 1).mean() >= 0.99 and diff.max() <= 2


def test_a_compiled_keyword_model_takes_pcm_and_answers_like_python(tmp_path, tone_bundle):
    from edgewise.profile import make_session

    from edgewise.bundle import read_bundle
    from edgewise.codegen.compile import compile_bundle
    from edgewise.targets import load_target

    bundle = tone_bundle
    compiled = compile_bundle(bundle, tmp_path / "c", load_target("mcu-256k"))
    assert "ew_frontend.c" in compiled.sources and "c/ew_frontend.c" in read_bundle(bundle).files
    f = compiled.figures()  # the front end's scratch and tables are counted against the target
    assert f["frontend_ram_bytes"] == 4 * (2 * 512 + 40) and 4000 < f["frontend_tables_bytes"] < 12000
    exe = build_host(compiled.sources, tmp_path / "build")
    # Execute: fresh recordings of each class, as 16 kHz PCM, through the C program and through Python
    spec = AudioSpec.from_dict(read_bundle(bundle).preprocessing["audio"])
    pcm, truth = tone_clips(read_bundle(bundle).labels)
    proc = subprocess.run([str(exe)], input=pcm.tobytes(), capture_output=True, timeout=120, check=True)
    c_labels = np.array([int(line.split("|")[1]) for line in proc.stdout.decode().strip().splitlines()])
    sess = make_session(str(bundle / "model.onnx"), reference=True)  # exact int8, as the C computes
    feats = np.stack([features(c.astype(np.float32) / 32768, spec)[None] for c in pcm])
    py_labels = sess.run(None, {sess.get_inputs()[0].name: feats})[0].reshape(len(feats), -1).argmax(1)
    # Assert: the device's answers are Python's, and right
    assert len(c_labels) == len(truth)
    assert (c_labels == py_labels).mean() >= 0.95, (c_labels, py_labels)
    assert (c_labels == np.array(truth)).mean() >= 0.9, (c_labels, truth)
    # a recording shorter than a clip is padded with silence, not silently skipped
    short = subprocess.run([str(exe)], input=pcm[0, 2000:12000].tobytes(), capture_output=True, timeout=60, check=True)
    assert len(short.stdout.decode().strip().splitlines()) == 1


def _stream(bundle, tmp_path, order: list[str], settings: dict | None = None):  # type: ignore[no-untyped-def]
    """`bundle` compiled with its front end and stream; a recording of the tone words in `order` as a WAV; what
    the C program printed streaming it, what the NumPy reference detects in it, and the compiled sources."""
    from edgewise.bundle import read_bundle
    from edgewise.codegen.compile import compile_bundle
    from edgewise.media.recognize import Smoothing, detect_keywords
    from edgewise.profile import make_session
    from edgewise.targets import load_target

    compiled = compile_bundle(bundle, tmp_path / "c", load_target("mcu-256k"))
    manifest = read_bundle(bundle)
    pcm, said = tone_recording(order)
    (tmp_path / "talk.wav").write_bytes(wav_bytes(pcm.astype(np.float32) / 32767, 16000))
    exe = build_host(compiled.sources, tmp_path / "build")
    # the C program streams the WAV file in 512-sample chunks; the reference slides over it in NumPy
    proc = subprocess.run([str(exe), str(tmp_path / "talk.wav")], capture_output=True, text=True, timeout=120)
    spec = AudioSpec.from_dict(manifest.preprocessing["audio"])
    sess = make_session(str(bundle / "model.onnx"), reference=True)  # exact int8, as the C computes
    ref = detect_keywords(pcm.astype(np.float32) / 32768, spec, manifest.labels,
                          lambda x: sess.run(None, {sess.get_inputs()[0].name: x})[0], Smoothing.from_dict(settings))
    assert proc.returncode == 0, proc.stderr
    return [line.split() for line in proc.stdout.strip().splitlines()], ref, said, pcm, exe, compiled


def test_the_streaming_c_hears_what_the_reference_hears_in_a_long_recording(tmp_path, tone_bundle):
    # Execute: the keyword model compiled with its front end and stream, on a recording of six words
    got, ref, said, pcm, exe, compiled = _stream(tone_bundle, tmp_path, ["low", "high", "mid", "mid", "low", "high"])
    # Assert: the same words at the same times, with the same scores; every word said is among them
    assert {"ew_stream.c", "ew_stream.h"} <= set(compiled.sources) and compiled.figures()["stream_ram_bytes"] > 0
    assert [(g[0], float(g[2])) for g in got] == [(d["label"], d["time_s"]) for d in ref], (got, ref)
    assert np.allclose([float(g[1]) for g in got], [d["score"] for d in ref], atol=2e-4)
    for name, end in said:
        assert any(g[0] == name and abs(float(g[2]) - end) < 0.8 for g in got), (name, end, got)
    # a file the device cannot stream is refused with the conversion to run
    (tmp_path / "stereo.wav").write_bytes(wav_bytes(pcm[:8000].astype(np.float32) / 32767, 16000, channels=2))
    bad = subprocess.run([str(exe), str(tmp_path / "stereo.wav")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "16-bit mono PCM at 16000 Hz" in bad.stderr and "ffmpeg" in bad.stderr


def test_the_bundle_sets_the_hop_and_smoothing_and_every_tier_follows_it(tmp_path, tone_bundle):
    from fastapi.testclient import TestClient

    from edgewise.agent.runner import AgentConfig, build_agent

    from ..harness import assert_clean_failure, ew, set_keyword_spotting

    # Prepare: the bundle asks for a model run every 80 ms and a stricter threshold
    settings = {"hop_ms": 80, "threshold": 0.6, "average_ms": 240}
    set_keyword_spotting(tone_bundle, settings)
    # Execute
    lines, ref, _, _, _, compiled = _stream(tone_bundle, tmp_path, ["mid", "low", "high", "low"], settings)
    # Assert: the C follows the bundle's settings exactly as the reference does (times on the 80 ms grid)
    assert "#define EW_ST_HOP_SAMPLES 1280" in compiled.sources["ew_stream.h"]
    assert [(g[0], float(g[2])) for g in lines] == [(d["label"], d["time_s"]) for d in ref] and lines, (lines, ref)
    assert all(round(float(g[2]) * 1000 - 1000) % 80 == 0 for g in lines)
    agent = build_agent(AgentConfig(bundles=[tone_bundle], tier="server", data_dir=tmp_path / "agent"))
    try:  # the agent reads the same settings from the bundle
        r = TestClient(agent.app).post("/predict", content=(tmp_path / "talk.wav").read_bytes(),
                                       headers={"content-type": "audio/wav"})
    finally:
        agent.close()
    assert [(d["label"], d["time_s"]) for d in r.json()["detections"]] == [(d["label"], d["time_s"]) for d in ref]
    # settings that cannot work are refused when the TOML is read, before any search
    (tmp_path / "bad.toml").write_text("[postprocess.keyword_spotting]\nhop_ms = 30\n")
    assert_clean_failure(ew("optimize", str(tone_bundle), "--target", "mcu-256k", "--data", "digits", "--out",
                            str(tmp_path / "o"), "--preprocess", str(tmp_path / "bad.toml")), "multiple of")


def test_the_agent_serves_an_mcu_bundle_with_exact_int8_where_the_cpu_saturates(monkeypatch):
    """An x86 CPU without VNNI saturates ORT's fused int8 kernels; the agent then runs a bundle made for an MCU
    with exact int8 semantics, as the device's C computes, and any other bundle as it was measured."""
    from edgewise.agent.serve.models import _exact_int8
    from edgewise.bundle import Manifest
    from edgewise.profile import cpu

    def manifest(target: str, precision: str) -> Manifest:
        return Manifest("m", "1.0.0", target, [], [], [], {}, precision, [], {})

    monkeypatch.setattr(cpu, "int8_saturates", lambda: True)
    assert _exact_int8(manifest("mcu-256k", "int8"))
    assert not _exact_int8(manifest("edge-node", "int8")) and not _exact_int8(manifest("mcu-256k", "fp32"))
    assert not _exact_int8(manifest("no-such-target", "int8"))
    monkeypatch.setattr(cpu, "int8_saturates", lambda: False)
    assert not _exact_int8(manifest("mcu-256k", "int8"))
