"""Audio from WAV files to a keyword: the front end's NumPy reference, WAV decoding at any rate and width,
WAV folders as data, the bundled keywords set (synthesized speech, held-out voices), and the agent
answering a WAV with a class name."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from edgewise.errors import DataError
from edgewise.media.audio import AudioSpec, features, read_wav, resample, write_wav

from ..harness import tone, tone_folder, wav_bytes


@pytest.mark.parametrize("width,channels", [(1, 1), (2, 1), (3, 1), (4, 1), (2, 2)])
def test_pcm_wav_of_any_width_and_channel_count_decodes_to_the_same_signal(width, channels):
    x = tone(440, 8000, 0.25)
    got, rate = read_wav(wav_bytes(x, 8000, width, channels))
    assert rate == 8000 and got.shape == x.shape
    assert np.abs(got - x).max() < (0.01 if width == 1 else 1e-4)


def test_bad_wavs_are_named_not_crashed_on():
    with pytest.raises(DataError, match="not a readable PCM WAV"):
        read_wav(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(DataError, match="not a readable PCM WAV"):
        read_wav(b"")
    long = wav_bytes(np.zeros(8000 * 61, np.float32), 8000)
    with pytest.raises(DataError, match="at most 60 s"):
        read_wav(long)


def test_the_front_end_puts_a_tone_in_its_mel_bin_at_any_input_rate():
    spec = AudioSpec()
    assert (spec.frames, spec.bins) == (49, 40)
    peaks = []
    for rate in (8000, 16000, 22050, 44100):
        x = resample(tone(1000, rate), rate, spec.sample_rate)
        spectrum = np.abs(np.fft.rfft(x))
        assert abs(spectrum.argmax() * spec.sample_rate / len(x) - 1000) < 2  # the tone survives resampling
        peaks.append(int(features(x, spec).mean(0).argmax()))
    assert len(set(peaks)) == 1  # the same mel bin whatever the recording's rate
    # a 7 kHz tone recorded at 44.1 kHz is inside the band; 12 kHz is above the new Nyquist and must vanish
    alias = resample(tone(12000, 44100), 44100, 16000)
    assert np.sqrt(np.mean(alias**2)) < 0.01
    mfcc = features(resample(tone(1000, 16000), 16000, 16000), AudioSpec(mfcc=10))
    assert mfcc.shape == (49, 10) and np.isfinite(mfcc).all()
    with pytest.raises(DataError, match="power of two"):
        AudioSpec(fft=500)
    silent = features(np.zeros(16000, np.float32), spec)
    assert np.isfinite(silent).all() and silent.max() == pytest.approx(np.log(1e-6), abs=1e-3)


@pytest.mark.e2e  # WAV folder -> train -> optimize -> agent
def test_a_wav_folder_trains_optimizes_and_the_agent_answers_a_wav_with_its_name(tmp_path):
    from fastapi.testclient import TestClient

    from edgewise.agent.runner import AgentConfig, build_agent
    from edgewise.bundle import read_bundle
    from edgewise.data import load, load_splits
    from edgewise.optimize.pipeline import optimize
    from edgewise.optimize.search import SearchOptions
    from edgewise.targets import load_target
    from edgewise.zoo import TrainConfig, train

    root = tone_folder(tmp_path / "sounds")
    ds = load(str(root))
    assert ds.labels == ["high", "low", "mid"] and ds.sample_shape == (1, 49, 40)
    assert ds.preprocessing["audio"]["sample_rate"] == 16000
    tm = train("cnn", load_splits(str(root)), TrainConfig(epochs=6, min_steps=150))
    assert tm.metrics["test_accuracy"] > 0.9, tm.metrics
    tm.save(tmp_path / "t")
    out = optimize(tmp_path / "t", str(root), load_target("cortex-a"), tmp_path / "o",
                   SearchOptions(torch_passes=False, only=("baseline-fused",), measure_memory=False, latency_runs=5))
    assert read_bundle(out.bundle).preprocessing["audio"]["mel_bins"] == 40  # the front end travels with it
    agent = build_agent(AgentConfig(bundles=[out.bundle], tier="server", data_dir=tmp_path / "a"))
    client = TestClient(agent.app)
    try:
        r = client.post("/predict", content=wav_bytes(tone(1500, 22050, 0.8), 22050, 2, 2),
                        headers={"content-type": "audio/wav"})
        assert r.status_code == 200, r.text
        assert r.json()["label"] == "mid" and {t["label"] for t in r.json()["top"]} == {"low", "mid", "high"}
        # a longer recording answers the sounds in it, in order, with when each was decided
        gap = np.zeros(16000, np.float32)
        rec = np.concatenate([gap, tone(1500, 16000), gap, tone(500, 16000), gap])
        r = client.post("/predict", content=wav_bytes(rec, 16000), headers={"content-type": "audio/wav"})
        assert r.status_code == 200 and r.json()["task"] == "keyword_spotting", r.text
        found = r.json()["detections"]
        assert [d["label"] for d in found][:2] == ["mid", "low"], found
        assert 1.0 < found[0]["time_s"] < 2.6 and 3.0 < found[1]["time_s"] < 4.6, found
        bad = client.post("/predict", content=b"RIFFnope", headers={"content-type": "audio/wav"})
        assert bad.status_code == 422 and "WAV" in bad.json()["error"]
        # raw PCM straight from a microphone: little-endian audio/pcm or big-endian audio/L16, with its rate
        pcm = np.round(np.repeat(tone(1500, 22050, 0.8)[:, None], 2, 1) * 32767).astype(np.int16)
        for ctype, data in (("audio/pcm; rate=22050; channels=2", pcm.astype("<i2").tobytes()),
                            ("audio/L16;rate=22050;channels=2", pcm.astype(">i2").tobytes())):
            r = client.post("/predict", content=data, headers={"content-type": ctype})
            assert r.status_code == 200 and r.json()["label"] == "mid", (ctype, r.text)
        r = client.post("/predict", content=pcm.tobytes(), headers={"content-type": "audio/pcm"})
        assert r.status_code == 422 and "rate=16000" in r.json()["error"]
    finally:
        agent.close()


@pytest.mark.e2e
def test_the_keywords_set_is_spoken_by_held_out_voices_in_its_test_split(tmp_path, monkeypatch):
    assert shutil.which("espeak-ng"), "espeak-ng is needed (.ci/run installs it)"
    monkeypatch.setenv("EDGEWISE_CACHE", str(tmp_path / "cache"))
    from edgewise.data import load_splits
    from edgewise.data.keywords import KEYWORDS, TEST_VOICES
    from edgewise.zoo import TrainConfig, train

    s = load_splits("keywords")
    assert set(s.test.groups) == set(TEST_VOICES) and not set(s.train.groups) & set(TEST_VOICES)
    assert set(KEYWORDS) | {"unknown", "silence"} == set(s.train.labels)
    assert (tmp_path / "cache" / "keywords-v1" / "yes").is_dir()  # cached as a WAV folder
    tm = train("cnn", s, TrainConfig(epochs=30, min_steps=300))
    assert tm.metrics["test_accuracy"] > 0.8, tm.metrics  # on voices it never heard
    _ = write_wav  # the writer the synthesizer uses round-trips through read_wav
    x, rate = read_wav(write_wav(tone(300, 16000), 16000))
    assert rate == 16000 and np.abs(x - tone(300, 16000)).max() < 1e-4


def test_the_recognizer_smooths_suppresses_and_ignores_silence():
    from edgewise.media.audio import AudioSpec
    from edgewise.media.recognize import Recognizer, Smoothing

    cfg = Smoothing(average_ms=100, threshold=0.6, suppress_ms=500, min_count=2)
    # 40 ms hops: 100 ms averages the last 3 hops; 500 ms suppresses a word for 13 hops (12 x 40 < 500)
    assert cfg.hops(AudioSpec()) == (640, 3, 13)
    rec = Recognizer(["silence", "unknown", "yes", "no"], 3, 13, cfg)
    one = lambda k, p=0.9: np.eye(4)[k] * p + (1 - p) / 4  # noqa: E731
    hits = [(t, rec.update(t // 40, one(k))) for t, k in [(0, 0), (40, 0), (80, 2), (120, 2), (160, 2), (200, 2),
                                                          (240, 0), (600, 2), (640, 2), (800, 3), (840, 3)]]
    found = [(h[0], t) for t, h in hits if h]
    # yes once its average and count are there (120 ms), not again within 500 ms; yes again at 640;
    # no at once after it (another word is not suppressed); silence never
    assert found == [("yes", 120), ("yes", 640), ("no", 840)], found
    assert rec.update(900 // 40, one(3, 0.4)) is None  # under the threshold
