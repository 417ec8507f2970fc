"""Anomaly detection trained on normal running only: the spectral front end, the bundled vibration set, the
autoencoder and its calibrated threshold, through optimize and the agent."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgewise.data import load, load_splits
from edgewise.errors import DataError
from edgewise.media import anomaly as an
from edgewise.media.sensor import SensorInput, parse_readings
from edgewise.media.spectral import SpectralSpec, features, fit, raw_features

from ..harness import assert_clean_failure, ew


def test_the_spectral_front_end_finds_a_tone_in_its_band_and_refuses_what_it_cannot_compute():
    spec = SpectralSpec(1000.0, 1000, ("x", "y"), fft=128, bands=16)
    t = np.arange(1000) / 1000
    w = np.stack([np.sin(2 * np.pi * 100 * t), np.random.default_rng(0).normal(size=1000)])[None]
    f = raw_features(spec, w)[0]
    assert f.shape == (spec.features,) == (40,) and len(spec.feature_names()) == 40
    assert int(np.argmax(f[:16])) == 3  # 100 Hz lies in the 4th 31.25 Hz band
    assert f[16 + 1] == pytest.approx(np.sin(0.4 * np.pi) * np.sqrt(2), rel=0.01)  # crest of a sine sampled 10x
    assert f[20 + 16 + 3] == pytest.approx(3.0, abs=0.5)  # Gaussian noise's kurtosis
    with pytest.raises(DataError, match="power of two"):
        SpectralSpec(1000.0, 1000, ("x",), fft=100)
    with pytest.raises(DataError, match="shorter than the fft"):
        SpectralSpec(1000.0, 64, ("x",), fft=128)
    with pytest.raises(DataError, match="2 channels x 1000"):
        raw_features(spec, np.zeros((1, 3, 1000)))
    with pytest.raises(DataError, match="NaN"):
        raw_features(spec, np.full((1, 2, 1000), np.nan))
    fitted = fit(spec, np.random.default_rng(1).normal(size=(20, 2, 1000)))
    z = features(fitted, 1000 * w)  # a reading far outside training is clipped, not extrapolated
    assert np.abs(z).max() <= fitted.clip and SpectralSpec.from_dict(fitted.as_dict()) == fitted


def test_readings_parse_by_channel_name_and_cut_into_the_streams_windows():
    x = parse_readings("timestamp;az;ax;label\n0;1;2;n\n1;3;4;n\n", ("ax", "az"))
    assert x.tolist() == [[2, 1], [4, 3]]
    assert parse_readings("1,2\n3,4\n", ("ax", "az")).tolist() == [[1, 2], [3, 4]]
    with pytest.raises(DataError, match="no column ay"):
        parse_readings("ax,az\n1,2\n", ("ax", "ay"))
    with pytest.raises(DataError, match="a number for every channel"):
        parse_readings("ax,az\n1,oops\n", ("ax", "az"))
    sensor = SensorInput(("a", "b"), 100.0, 200, 50)
    ends, wins = sensor.windows(np.arange(1000).reshape(500, 2))
    assert ends.tolist() == [200, 250, 300, 350, 400, 450, 500] and wins.shape == (7, 2, 200)
    assert wins[1, 0, 0] == 100  # the second window starts at sample 50: channel a's value there
    with pytest.raises(DataError, match="a window is 200 samples"):
        sensor.windows(np.zeros((150, 2)))
    with pytest.raises(DataError, match="NaN"):
        sensor.windows(np.full((300, 2), np.nan))
    raw = SensorInput.from_preprocessing({"layout": "NCT", "rate_hz": 100.0, "window_ms": 2000, "stride_ms": 500,
                                          "channels": ["a", "b"], "mean": [1.0, 2.0], "std": [2.0, 4.0]})
    assert (raw.kind, raw.window, raw.stride) == ("raw", 200, 50)
    assert raw.inputs(wins[:1])[0, :, 0].tolist() == [(0 - 1) / 2, (1 - 2) / 4]


def test_the_vibration_set_is_seeded_and_holds_its_faults_and_unseen_runs_out_for_test():
    ds = load("vibration")
    assert ds.sample_shape == (3, 1000) and ds.labels[0] == "normal" and len(ds.labels) == 6
    assert np.array_equal(load("vibration").x[:5], ds.x[:5])
    s = load_splits("vibration")
    assert set(s.train.y) == set(s.val.y) == {0}  # faults are never trained or calibrated on
    assert set(s.test.y) == set(range(6)) and not set(s.train.groups) & set(s.test.groups)


def test_an_autoencoder_trained_on_normal_runs_flags_faults_at_the_false_alarm_rate_asked(vibration_bundle):
    from edgewise.zoo import load_trained

    tm = load_trained(vibration_bundle.parent.parent / "train")  # what the fixture trained, as `train` saved it
    m = tm.metrics
    assert m["test_auroc"] >= 0.93, m  # benchmarks/RESULTS.md records the figure at full length
    assert m["test_false_alarm_rate"] <= 0.03 and m["test_detection_rate"] >= 0.6, m
    assert m["test_detection_by_class"]["bearing_outer"] == 1.0, m
    assert m["calibration"] == "3-fold over 34 groups of windows"  # whole runs, never a training run's neighbours
    assert tm.postprocessing == {"kind": "anomaly", "score": "mean_square", "threshold": m["threshold"],
                                 "false_alarm_rate": 0.01, "normal_label": "normal"}
    assert tm.preprocessing["spectral"]["channels"] == ["acc_x", "acc_y", "acc_z"] and tm.sample_shape == (60,)


def test_a_normal_only_logger_csv_trains_a_detector_from_the_command_line(tmp_path):
    from edgewise.data.vibration import write_log

    write_log(str(tmp_path / "normal.csv"), [("normal", 60.0)], seed=3)
    out = ew("train", "--model", "autoencoder", "--data", f"{tmp_path / 'normal.csv'}:window=1000,stride=500",
             "--out", str(tmp_path / "t"), "--false-alarm-rate", "0.05")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "anomaly threshold" in out.stdout and "false alarms" in out.stdout
    meta = json.loads((tmp_path / "t" / "train.json").read_text())
    assert meta["postprocessing"]["false_alarm_rate"] == 0.05 and meta["preprocessing"]["spectral"]["rate_hz"] > 990
    # a classifier has no threshold to set; a labelled log without a normal class is asked which is normal
    assert_clean_failure(ew("train", "--model", "mlp", "--data", "digits", "--out", str(tmp_path / "x"),
                            "--false-alarm-rate", "0.1"), "--model autoencoder")
    assert not (tmp_path / "x").exists()
    with pytest.raises(DataError, match="which class is normal"):
        an.normal_index(["walk", "idle"], {})


def test_optimize_recalibrates_the_threshold_and_the_agent_answers_readings_per_window(vibration_bundle, tmp_path):
    from fastapi.testclient import TestClient

    from edgewise.agent.runner import AgentConfig, build_agent
    from edgewise.bundle import read_bundle
    from edgewise.data.vibration import recording

    man = read_bundle(vibration_bundle)
    assert man.task == "anomaly" and man.postprocessing["kind"] == "anomaly"
    assert man.metrics["accuracy_kind"] == "auroc" and man.metrics["anomaly_auroc"] >= 0.9, man.metrics
    assert "spectral" in man.preprocessing and man.precision == "int8"
    agent = build_agent(AgentConfig(bundles=[vibration_bundle], tier="server", data_dir=tmp_path / "a"))
    client = TestClient(agent.app)
    try:
        calm, faulty = recording("normal", 3.0, seed=51), recording("bearing_outer", 3.0, seed=52)
        rows = np.concatenate([calm, faulty], 1).T  # 6 s of readings, rows of (acc_x, acc_y, acc_z)
        csv = "t,acc_z,acc_x,acc_y\n" + "".join(f"{i},{r[2]},{r[0]},{r[1]}\n" for i, r in enumerate(rows))
        r = client.post("/predict", content=csv, headers={"content-type": "text/csv"})
        assert r.status_code == 200, r.text
        wins = r.json()["windows"]
        assert [w["end_s"] for w in wins] == [1.0 + 0.5 * k for k in range(11)]
        # the calm run is mostly normal (the threshold allows 1% false alarms per window, and an unseen
        # run can sit near it); every window of the bearing fault is an anomaly
        assert sum(w["anomaly"] for w in wins[:4]) <= 1 and all(w["anomaly"] for w in wins[6:]), wins
        assert r.json()["anomalies"] == sum(w["anomaly"] for w in wins)
        j = client.post("/predict", json={"readings": rows.tolist()})
        assert j.status_code == 200 and [w["score"] for w in j.json()["windows"]] == [w["score"] for w in wins]
        for body, ctype, fragment in ((b"acc_x,acc_y\n1,2\n", "text/csv", "no column acc_z"),
                                      (b'{"readings": [[1, 2, 3]]}', "application/json", "a window is 1000"),
                                      (b'{"readings": [1, 2, 3]}', "application/json", "one row per sample")):
            bad = client.post("/predict", content=body, headers={"content-type": ctype})
            assert bad.status_code == 422 and fragment in bad.json()["error"], bad.text
        # the features themselves, as any tensor: one verdict per sample
        sensor = SensorInput.from_preprocessing(man.preprocessing)
        x = sensor.inputs(sensor.windows(rows)[1])
        t = client.post("/predict", json={"inputs": x[-2:].tolist()})
        assert t.status_code == 200 and all(v["anomaly"] for v in t.json()["results"]), t.text
    finally:
        agent.close()


def test_a_device_streams_chunks_and_the_agent_answers_every_window_once_whatever_the_network_does(
        vibration_bundle, tmp_path):
    """Chunks of any size over HTTP: the same windows (and verdicts) as the whole recording at once; a
    redelivered chunk changes nothing; a gap restarts the ring; a late chunk is counted, never crashes."""
    from fastapi.testclient import TestClient

    from edgewise.agent.runner import AgentConfig, build_agent
    from edgewise.data.vibration import recording

    rows = np.concatenate([recording("normal", 3.0, seed=81), recording("bearing_inner", 3.0, seed=82)], 1).T
    agent = build_agent(AgentConfig(bundles=[vibration_bundle], tier="node", data_dir=tmp_path / "a"))
    client = TestClient(agent.app)
    try:
        whole = client.post("/predict", json={"readings": rows.tolist()}).json()["windows"]
        got, seq, rng = [], 0, np.random.default_rng(0)
        while seq < len(rows):
            n = int(rng.integers(1, 400))
            chunk = {"readings": rows[seq : seq + n].tolist(), "seq": seq, "t0": 1000.0 + seq / 1000}
            r = client.post("/v1/readings/autoencoder/pump-7", json=chunk)
            assert r.status_code == 200, r.text
            got += r.json()["windows"]
            if n % 3 == 0:  # the network delivers it twice
                assert client.post("/v1/readings/autoencoder/pump-7", json=chunk).json()["windows"] == []
            seq += n
        assert [w["score"] for w in got] == pytest.approx([w["score"] for w in whole], rel=1e-6)
        assert [w["ts"] for w in got] == pytest.approx([1000.0 + w["end_s"] - 0.001 for w in whole], abs=2e-3)
        assert all(w["device"] == "pump-7" for w in got)
        health = client.get("/health").json()["sensor_streams"]
        assert health["samples"] == len(rows) and health["windows"] == len(whole) and health["duplicate_samples"] > 0
        # another device: a gap of 2 s restarts its ring (no window crosses it); the chunk it skipped arrives late
        dev = "/v1/readings/autoencoder/pump-8"
        assert client.post(dev, json={"readings": rows[:1500].tolist(), "seq": 0}).json()["samples"] == 1500
        after = client.post(dev, json={"readings": rows[3500:4600].tolist(), "seq": 3500}).json()
        assert [w["ts"] for w in after["windows"]][:1] and len(after["windows"]) == 1  # 1,100 readings: one window
        late = client.post(dev, json={"readings": rows[1500:2000].tolist(), "seq": 1500}).json()
        assert late["windows"] == [] and late["samples"] == 0
        h = client.get("/health").json()["sensor_streams"]
        assert h["gaps"] == 1 and h["gap_samples"] == 2000 and h["late_samples"] == 500 and h["devices"] == 2
        # CSV chunks, and what a broken sensor sends
        csv = "acc_x,acc_y,acc_z\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows[:1000])
        r = client.post("/v1/readings/autoencoder/pump-9?seq=0&t0=5", content=csv, headers={"content-type": "text/csv"})
        assert r.status_code == 200 and len(r.json()["windows"]) == 1 and r.json()["windows"][0]["ts"] == 5.999
        for body in ({"readings": [[1, 2]]}, {"readings": [[1, 2, float("nan")]]}, {"nope": 1}, {"readings": [[1, 2, 3]], "seq": "x"}):
            bad = client.post("/v1/readings/autoencoder/pump-9", content=__import__("json").dumps(body),
                              headers={"content-type": "application/json"})
            assert bad.status_code == 422, (body, bad.text)
        assert client.post("/v1/readings/nosuch/pump-9", json={"readings": [[1, 2, 3]]}).status_code == 404
    finally:
        agent.close()


def test_spectral_features_are_for_an_mlp_on_sensor_windows_and_say_so_otherwise(tmp_path):
    from edgewise.errors import ModelError
    from edgewise.zoo import TrainConfig, train

    from ..harness import sensor_log_csv

    s = load_splits(str(sensor_log_csv(tmp_path / "log.csv", seconds_per_segment=12)))
    tm = train("mlp", s, TrainConfig(epochs=2, min_steps=10), features="spectral")
    assert tm.sample_shape == (3 * 20,) and tm.preprocessing["spectral"]["rate_hz"] == pytest.approx(50, rel=0.01)
    for arch, data, kind, fragment in (("cnn1d", s, "spectral", "train an mlp"),
                                       ("mlp", load_splits("digits"), "spectral", "sensor windows"),
                                       ("autoencoder", s, "raw", "spectral features"),
                                       ("mlp", s, "mel", "unknown features")):
        with pytest.raises(ModelError, match=fragment):
            train(arch, data, TrainConfig(epochs=1), features=kind)


def test_a_window_too_short_for_the_spectral_bands_says_how_long_it_must_be():
    with pytest.raises(DataError, match=r"window of 20 samples is too short .* at least 32 \(160 ms at 200 Hz\)"):
        SpectralSpec.for_windows({"rate_hz": 200.0, "channels": ["x"]}, (1, 20))
