"""The audio front end in C against its NumPy reference, and a keyword model compiled with it: raw PCM in,
a class out, on the host build of the generated C."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from edgewise.codegen.frontend import emit_audio_frontend, quantize_reference
from edgewise.media.audio import AudioSpec, features, fit_clip

from ..harness import build_host, tone, tone_folder

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


def test_a_compiled_keyword_model_takes_pcm_and_answers_like_python(tmp_path):
    import onnxruntime as ort

    from edgewise.bundle import read_bundle
    from edgewise.codegen.compile import compile_bundle
    from edgewise.data import load_splits
    from edgewise.optimize.pipeline import optimize
    from edgewise.optimize.search import SearchOptions
    from edgewise.targets import load_target
    from edgewise.zoo import TrainConfig, train

    root = tone_folder(tmp_path / "sounds")
    train("cnn", load_splits(str(root)), TrainConfig(epochs=6, min_steps=150), width=0.5).save(tmp_path / "t")
    out = optimize(tmp_path / "t", str(root), load_target("mcu-256k"), tmp_path / "o",
                   SearchOptions(torch_passes=False, only=("baseline-int8-minmax",), measure_memory=False,
                                 latency_runs=5, max_accuracy_drop=20))
    assert out.bundle is not None, out.result.why
    compiled = compile_bundle(out.bundle, tmp_path / "c", load_target("mcu-256k"))
    assert "ew_frontend.c" in compiled.sources and "c/ew_frontend.c" in read_bundle(out.bundle).files
    f = compiled.figures()  # the front end's scratch and tables are counted against the target
    assert f["frontend_ram_bytes"] == 4 * (2 * 512 + 40) and 4000 < f["frontend_tables_bytes"] < 12000
    exe = build_host(compiled.sources, tmp_path / "build")
    # Execute: fresh recordings of each class, as 16 kHz PCM, through the C program and through Python
    spec = AudioSpec.from_dict(read_bundle(out.bundle).preprocessing["audio"])
    rng = np.random.default_rng(9)
    names = read_bundle(out.bundle).labels
    freqs = {"low": 500, "mid": 1500, "high": 3000}
    truth, pcm = [], []
    for k, name in enumerate(names):
        for _ in range(8):
            x = fit_clip(tone(freqs[name] * rng.uniform(0.97, 1.03), 16000, rng.uniform(0.5, 1.0),
                              rng.uniform(0.1, 0.8)), spec)
            pcm.append(np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16))
            truth.append(k)
    pcm_arr = np.stack(pcm)
    proc = subprocess.run([str(exe)], input=pcm_arr.tobytes(), capture_output=True, timeout=120, check=True)
    c_labels = np.array([int(line.split("|")[1]) for line in proc.stdout.decode().strip().splitlines()])
    sess = ort.InferenceSession(str(out.bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    feats = np.stack([features(c.astype(np.float32) / 32768, spec)[None] for c in pcm_arr])
    py_labels = sess.run(None, {sess.get_inputs()[0].name: feats})[0].reshape(len(feats), -1).argmax(1)
    # Assert: the device's answers are Python's, and right
    assert len(c_labels) == len(truth)
    assert (c_labels == py_labels).mean() >= 0.95, (c_labels, py_labels)
    assert (c_labels == np.array(truth)).mean() >= 0.9, (c_labels, truth)
