"""The audio front end in C against its NumPy reference, and a keyword model compiled with it: raw PCM in,
a class out, on the host build of the generated C."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from edgewise.codegen.frontend import emit_audio_frontend, quantize_reference
from edgewise.media.audio import AudioSpec, features

from ..harness import build_host, tone, tone_clips, tone_keyword_bundle

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
    from edgewise.targets import load_target

    bundle = tone_keyword_bundle(tmp_path)
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
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    feats = np.stack([features(c.astype(np.float32) / 32768, spec)[None] for c in pcm])
    py_labels = sess.run(None, {sess.get_inputs()[0].name: feats})[0].reshape(len(feats), -1).argmax(1)
    # Assert: the device's answers are Python's, and right
    assert len(c_labels) == len(truth)
    assert (c_labels == py_labels).mean() >= 0.95, (c_labels, py_labels)
    assert (c_labels == np.array(truth)).mean() >= 0.9, (c_labels, truth)
    # a recording shorter than a clip is padded with silence, not silently skipped
    short = subprocess.run([str(exe)], input=pcm[0, 2000:12000].tobytes(), capture_output=True, timeout=60, check=True)
    assert len(short.stdout.decode().strip().splitlines()) == 1
