"""The spectral front end in C against its NumPy reference, and an anomaly detector compiled with the sensor
stream: a CSV of readings in, a verdict per window out, on the host build and on an emulated Cortex-M4."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from edgewise.codegen.frontend import quantize_reference
from edgewise.codegen.sensor import emit_spectral
from edgewise.media.sensor import SensorInput
from edgewise.media.spectral import SpectralSpec, features, fit

from ..harness import have

MAIN = """#include <stdio.h>
#include "ew_features.h"
int main(void)
{
    static float window[EW_FX_CHANNELS * EW_FX_WINDOW];
    static int8_t out[EW_FX_FEATURES];
    while (fread(window, sizeof(float), EW_FX_CHANNELS * EW_FX_WINDOW, stdin) == EW_FX_CHANNELS * EW_FX_WINDOW) {
        ew_features(window, out);
        fwrite(out, 1, EW_FX_FEATURES, stdout);
    }
    return 0;
}
"""


def test_c_spectral_features_match_the_numpy_reference_within_one_step(tmp_path):
    from edgewise.data.vibration import LABELS, recording

    spec = SpectralSpec(1000.0, 1000, ("acc_x", "acc_y", "acc_z"))
    cut = SensorInput(spec.channels, spec.rate_hz, spec.window, 250, spec)
    wins = np.concatenate([cut.windows(recording(k, 4.0, seed=60 + i).T)[1] for i, k in enumerate(LABELS)])
    wins = np.concatenate([wins, 1e-3 * wins[:5], 100 * wins[5:10] + 3.0])  # quiet, loud and offset sensors
    spec = fit(spec, wins)
    ref = features(spec, wins)
    scale, zp = 2 * spec.clip / 255, 0
    for name, text in {**emit_spectral(spec, scale, zp), "main.c": MAIN}.items():
        (tmp_path / name).write_text(text)
    exe = tmp_path / "sp"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-o", str(exe),
                    str(tmp_path / "ew_spectral.c"), str(tmp_path / "main.c"), "-lm"], check=True)
    out = subprocess.run([str(exe)], input=wins.astype(np.float32).tobytes(), capture_output=True, check=True,
                         timeout=60).stdout
    got = np.frombuffer(out, np.int8).reshape(ref.shape).astype(int)
    diff = np.abs(got - quantize_reference(ref, scale, zp).astype(int))
    print(f"{len(wins)} windows: {(diff == 0).mean():.6f} exact, {(diff <= 1).mean():.6f} within one step, "
          f"max {diff.max()}")
    assert (diff <= 1).mean() >= 0.99 and diff.max() <= 2


def _reference_verdicts(bundle, rows: np.ndarray) -> tuple[list[float], list[float], float]:
    """Window ends (s) and scores the NumPy front end and the integer reference of the int8 model give."""
    import onnx

    from edgewise.bundle import read_bundle
    from edgewise.codegen.lower import lower
    from edgewise.codegen.reference import quantize_input, run_reference
    from edgewise.media.anomaly import scores
    man = read_bundle(bundle)
    sensor = SensorInput.from_preprocessing(man.preprocessing)
    ends, wins = sensor.windows(rows)
    graph = lower(onnx.load(str(bundle / "model.onnx")))
    out = np.stack([run_reference(graph, quantize_input(graph, f[None])).reshape(-1) for f in sensor.inputs(wins)])
    t_out = graph.tensors[graph.output]
    residual = (out.astype(np.float64) - t_out.zero_point) * t_out.scale
    return [float(e) / sensor.rate_hz for e in ends], scores(residual).tolist(), float(man.postprocessing["threshold"])


def _recording(path) -> np.ndarray:  # type: ignore[no-untyped-def]
    from edgewise.data.vibration import recording, write_log

    write_log(str(path), [("normal", 4.0), ("bearing_inner", 3.0), ("normal", 2.0), ("misalignment", 3.0)], seed=70)
    return np.concatenate([recording(k, s, 70 + i) for i, (k, s) in enumerate(
        [("normal", 4.0), ("bearing_inner", 3.0), ("normal", 2.0), ("misalignment", 3.0)])], 1).T


def _parse(stdout: str) -> list[tuple[float, str, float]]:
    return [(float(t), v, float(s)) for t, v, s in (line.split() for line in stdout.strip().splitlines())]


def test_a_compiled_anomaly_detector_streams_a_csv_and_flags_the_faults_as_python_does(tmp_path, vibration_bundle):
    from edgewise.codegen.compile import compile_bundle
    from edgewise.codegen.toolchain import build_host
    from edgewise.targets import load_target

    compiled = compile_bundle(vibration_bundle, tmp_path / "c", load_target("mcu-256k"), update_bundle=False)
    assert {"ew_features.h", "ew_spectral.c", "ew_sensor.c"} <= set(compiled.sources)
    assert "#define EW_ANOMALY_THRESHOLD" in compiled.sources["ew_sensor.h"]
    f = compiled.figures()  # the window ring and the front end's scratch are counted against the target
    assert f["stream_ram_bytes"] == 4 * 3 * 1000 + 8 and f["frontend_ram_bytes"] == 4 * (2 * 128 + 64)
    exe = build_host(tmp_path / "c", tmp_path / "c" / "model")
    rows = _recording(tmp_path / "rec.csv")
    got = _parse(subprocess.run([str(exe), str(tmp_path / "rec.csv")], capture_output=True, text=True, check=True,
                                timeout=60).stdout)
    ends, ref, thr = _reference_verdicts(vibration_bundle, rows)
    assert [t for t, _, _ in got] == pytest.approx(ends)
    c_scores = np.array([s for _, _, s in got])
    assert np.allclose(c_scores, ref, rtol=0.03, atol=0.02), np.c_[c_scores, ref]
    clear = np.abs(np.array(ref) - thr) > 0.05 * thr  # away from the threshold, the verdicts are the same
    assert [v == "anomaly" for _, v, _ in got] == pytest.approx([s > thr for s in c_scores])
    assert np.array_equal(np.array([v == "anomaly" for _, v, _ in got])[clear], (np.array(ref) > thr)[clear])
    verdicts = [v for _, v, _ in got]
    assert all(v == "anomaly" for v in verdicts[7:11]), got  # windows wholly inside the bearing fault (5-7 s)
    assert verdicts[:3].count("anomaly") <= 1, got
    # a file without the channels the model reads is refused with their name
    (tmp_path / "bad.csv").write_text("t,acc_x,acc_y\n0,1,2\n")
    bad = subprocess.run([str(exe), str(tmp_path / "bad.csv")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no column acc_z" in bad.stderr


@pytest.mark.skipif(not (have("arm-none-eabi-gcc") and have("qemu-system-arm")),
                    reason="needs gcc-arm-none-eabi and qemu-system-arm")
@pytest.mark.e2e  # firmware under QEMU
def test_the_anomaly_firmware_prints_the_host_builds_verdicts_under_qemu(tmp_path, vibration_bundle):
    from edgewise.codegen.compile import compile_bundle
    from edgewise.codegen.toolchain import build_firmware, build_host, run_qemu
    from edgewise.targets import load_target

    compile_bundle(vibration_bundle, tmp_path / "c", load_target("mcu-256k"), update_bundle=False)
    _recording(tmp_path / "rec.csv")
    host = subprocess.run([str(build_host(tmp_path / "c", tmp_path / "c" / "model")), str(tmp_path / "rec.csv")],
                          capture_output=True, text=True, check=True, timeout=60).stdout
    elf, sizes = build_firmware(tmp_path / "c", "mps2-an386")
    out = run_qemu(elf, args=[str(tmp_path / "rec.csv")], timeout=300)
    board, hosted = _parse(out), _parse(host)
    assert [v for _, v, _ in board] == [v for _, v, _ in hosted]
    assert np.allclose([s for _, _, s in board], [s for _, _, s in hosted], rtol=1e-3)
    print(f"firmware: text {sizes['text']} B, data {sizes['data']} B, bss {sizes['bss']} B")
    assert sizes["bss"] >= 4 * 3 * 1000  # the window ring


@pytest.mark.e2e  # train -> optimize -> C -> agent
@pytest.mark.parametrize("arch,features", [("cnn1d", None), ("mlp", "spectral")])
def test_a_logger_csv_classifier_compiles_and_its_c_stream_labels_a_new_recording(tmp_path, arch, features):
    """train a classifier on a logger CSV with string labels (a cnn1d on the raw windows, or an mlp on their
    spectral features) -> int8 for mcu-256k -> C, which reads a second recording (another session, as a
    CSV with the logger's columns) and labels its windows as the integer reference does."""
    import onnx

    from edgewise.bundle import read_bundle
    from edgewise.codegen.compile import compile_bundle
    from edgewise.codegen.lower import lower
    from edgewise.codegen.reference import quantize_input, run_reference
    from edgewise.codegen.toolchain import build_host
    from edgewise.targets import load_target

    from ..harness import mcu_bundle, sensor_log_csv

    log = sensor_log_csv(tmp_path / "log.csv")
    bundle = mcu_bundle(tmp_path, arch, str(log), 12, features=features)
    man = read_bundle(bundle)
    assert man.labels == ["idle", "shake", "walk"]
    compiled = compile_bundle(bundle, tmp_path / "c", load_target("mcu-256k"), update_bundle=False)
    fe = "ew_spectral.c" if features == "spectral" else "ew_window.c"
    assert {fe, "ew_sensor.c"} <= set(compiled.sources) and len({"ew_spectral.c", "ew_window.c"} & set(compiled.sources)) == 1
    assert "EW_ANOMALY_THRESHOLD" not in compiled.sources["ew_sensor.h"]
    exe = build_host(tmp_path / "c", tmp_path / "c" / "model")
    new = sensor_log_csv(tmp_path / "new.csv", seconds_per_segment=8, seed=5)
    got = _parse(subprocess.run([str(exe), str(new)], capture_output=True, text=True, check=True, timeout=60).stdout)
    sensor = SensorInput.from_preprocessing(man.preprocessing)
    from edgewise.media.sensor import parse_readings

    rows = parse_readings(new.read_text(), sensor.channels)
    ends, wins = sensor.windows(rows)
    graph = lower(onnx.load(str(bundle / "model.onnx")))
    ref = [int(np.argmax(run_reference(graph, quantize_input(graph, x[None])))) for x in sensor.inputs(wins)]
    assert [v for _, v, _ in got] == [man.labels[k] for k in ref]  # the C stream is the integer reference
    truth = [line.split(",")[-1] for line in new.read_text().splitlines()[1:]]
    inside = [(v, truth[int(e) - 1]) for (_, v, _), e in zip(got, ends) if truth[int(e) - 1] == truth[int(e) - 100]]
    right = sum(v == t for v, t in inside) / len(inside)
    print(f"{arch}: C labels on a new recording: {right:.1%} of {len(inside)} windows inside one activity")
    assert right >= 0.8
    # the agent answers the same CSV, window by window, with the same labels (ORT's int8 kernels)
    from fastapi.testclient import TestClient

    from edgewise.agent.runner import AgentConfig, build_agent

    agent = build_agent(AgentConfig(bundles=[bundle], tier="server", data_dir=tmp_path / "a"))
    try:
        r = TestClient(agent.app).post("/predict", content=new.read_bytes(), headers={"content-type": "text/csv"})
        assert r.status_code == 200, r.text
        labels = [w["label"] for w in r.json()["windows"]]
        assert sum(a == v for a, (_, v, _) in zip(labels, got)) >= 0.95 * len(got)
    finally:
        agent.close()
