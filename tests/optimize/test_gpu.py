"""ONNX Runtime's GPU execution providers (issue 12).

Where CUDA is present, the search measures a GPU target's candidates on it and labels the figures so, the
fp16 candidate keeps the fp32 answers, and a provider that is built in but cannot start (TensorRT without
libnvinfer) gives way to the next one. Without a GPU those tests skip and say why; the fallback to the CPU
is tested in every run.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from edgewise.profile import fallback_note, make_session, running_on
from edgewise.targets import load_target

GPU_EPS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
needs_gpu = pytest.mark.skipif(not CUDA, reason="no CUDA execution provider here (needs onnxruntime-gpu and an "
                                                 "NVIDIA GPU); the CPU fallback is tested instead")


def _search(trained_cnn_dir, digits, only: tuple[str, ...], runs: int = 20):  # type: ignore[no-untyped-def]
    from edgewise.optimize.search import SearchOptions, search
    from edgewise.source import fit_data, load_source

    opts = SearchOptions(latency_runs=runs, measure_memory=False, torch_passes=False, calibration_samples=64,
                         only=only, max_accuracy_drop=100)
    src, splits = fit_data(load_source(trained_cnn_dir), digits)
    return search(src, splits, load_target("jetson-orin"), opts)


def test_fallback_note_names_what_was_skipped():
    assert fallback_note(GPU_EPS, "CUDAExecutionProvider") == (
        "TensorrtExecutionProvider not available here: running on CUDAExecutionProvider")
    assert fallback_note(GPU_EPS, "TensorrtExecutionProvider") is None
    assert fallback_note(("CUDAExecutionProvider",), "CPUExecutionProvider") == (
        "CUDAExecutionProvider not available here: running on CPUExecutionProvider")


@pytest.mark.parametrize("absent", ["MIGraphXExecutionProvider", "NoSuchExecutionProvider"])
def test_a_provider_that_cannot_start_is_tried_once_per_process(monkeypatch, trained_cnn_dir, absent):
    """TensorRT without libnvinfer cannot start, and ORT logs the missing library at every session that asks
    for it; the search makes hundreds. Here ORT itself leaves out MIGraphX (AMD's: not built in) and raises
    for a name it does not know: either way the provider is probed once and not asked for again. (Whether the
    probe model itself loads is checked on the CPU when the provider raised: a probe this ORT could not read
    must not turn a working GPU off.)"""
    from edgewise.profile import runtime
    from edgewise.source import load_source

    model = load_source(trained_cnn_dir).model
    asked: list[list[str]] = []
    real = ort.InferenceSession

    def spy(data, so, providers, **kw):  # type: ignore[no-untyped-def]
        asked.append(list(providers))
        return real(data, so, providers=providers, **kw)

    monkeypatch.setattr(runtime, "_started", {})
    monkeypatch.setattr(ort, "get_available_providers", lambda: [absent, "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", spy)
    eps = (absent, "CPUExecutionProvider")
    first, second = make_session(model, providers=eps), make_session(model, providers=eps)
    assert running_on(first) == running_on(second) == "CPUExecutionProvider"
    assert asked[0] == list(eps) and all(a == ["CPUExecutionProvider"] for a in asked[1:]), asked  # probed once
    assert len(asked) == 3 + (absent == "NoSuchExecutionProvider"), asked  # + the probe checked on the CPU alone
    assert fallback_note(eps, running_on(second)) == f"{absent} not available here: running on CPUExecutionProvider"


@pytest.mark.skipif(CUDA, reason="this machine has CUDA: the GPU tests below run instead")
def test_a_gpu_target_is_measured_on_the_cpu_here_and_the_report_says_so(trained_cnn_dir, digits):
    from edgewise.source import load_source

    sess = make_session(load_source(trained_cnn_dir).model, providers=GPU_EPS)
    assert running_on(sess) == "CPUExecutionProvider"
    r = _search(trained_cnn_dir, digits, ("baseline-fp32", "baseline-fused"), runs=5)
    assert any("jetson-orin: TensorrtExecutionProvider, CUDAExecutionProvider not available here" in n
               and "not the device's" in n for n in r.notes), r.notes
    for c in r.candidates + [r.baseline]:
        assert c.metrics["latency_source"] == "measured (ONNX Runtime CPU, this machine)", c.metrics


@needs_gpu
def test_a_cuda_session_runs_on_the_gpu_and_agrees_with_the_cpu(trained_cnn_dir, digits):
    from edgewise.source import load_source

    model = load_source(trained_cnn_dir).model
    cpu, gpu = make_session(model), make_session(model, providers=GPU_EPS)
    assert running_on(cpu) == "CPUExecutionProvider"
    assert running_on(gpu) in ("TensorrtExecutionProvider", "CUDAExecutionProvider"), gpu.get_providers()
    x = digits.test.x[:64].astype(np.float32)
    name = cpu.get_inputs()[0].name
    a, b = cpu.run(None, {name: x})[0], gpu.run(None, {name: x})[0]
    assert np.abs(a - b).max() <= 1e-3 * max(1.0, float(np.abs(a).max())), np.abs(a - b).max()
    assert (a.argmax(1) == b.argmax(1)).all()


@needs_gpu
def test_a_jetson_search_measures_on_the_gpu_and_fp16_keeps_the_answers(trained_cnn_dir, digits):
    r = _search(trained_cnn_dir, digits, ("baseline-fp32", "baseline-fused", "baseline-fp16", "baseline-int8-minmax"))
    by = {c.id: c for c in r.candidates}
    assert by["baseline-fp16"].status == "ok", by["baseline-fp16"].reason
    assert by["baseline-fp16"].metrics["accuracy_drop_points"] <= 0.5
    here = running_on(make_session(r.baseline.model, providers=GPU_EPS))
    for c in [r.baseline, *r.candidates]:
        if c.status == "ok":
            label = here.removesuffix("ExecutionProvider")
            assert c.metrics["latency_source"] == f"measured (ONNX Runtime {label}, this machine)", c.metrics
    # TensorRT is first in jetson-orin's list: if it could not start here, the report says where it ran instead
    assert (here == "TensorrtExecutionProvider") != any("TensorrtExecutionProvider not available here" in n
                                                         for n in r.notes), r.notes


# ORT's pip CPU build carries the Azure provider: ORT lists it first in a session that asks for it, while the
# CPU provider computes every node. It stands in for an accelerator below, so that a GPU target's candidate
# pinned to the CPU is told apart from the others on a machine without a GPU.
AZURE = "AzureExecutionProvider" in ort.get_available_providers()
STAND_IN = """name = "stand-in-accelerator"
description = "a GPU target whose accelerator is ORT's Azure provider (this machine has no GPU)"
tier = "node"
ram_bytes = 8589934592
flash_bytes = 68719476736
latency_budget_ms = 10.0
precisions = ["fp32"]
threads = 1
execution_providers = ["AzureExecutionProvider", "CPUExecutionProvider"]
"""


@pytest.mark.skipif(CUDA, reason="this machine has CUDA: the fused model on the CPU is a real candidate here")
def test_without_the_accelerator_the_cpu_candidate_is_not_planned_and_the_report_says_why(trained_cnn_dir, digits):
    r = _search(trained_cnn_dir, digits, ("baseline-fused-cpu",), runs=5)
    assert "baseline-fused-cpu" not in {c.id for c in r.candidates} | set(r.not_tried)
    assert any(n.startswith("jetson-orin: TensorrtExecutionProvider, CUDAExecutionProvider not available here")
               and "its CPU is not tried beside its accelerator (measure on the device" in n for n in r.notes), r.notes


@pytest.mark.skipif(not AZURE, reason="this ONNX Runtime build has no Azure provider to stand in for a GPU")
def test_a_gpu_targets_model_chosen_for_the_cpu_runs_on_the_cpu_in_the_search_the_bundle_and_the_agent(
        trained_cnn_dir, digits, tmp_path):
    """A small model can finish on the device's CPU before a GPU has launched its kernels (the digits CNN on an
    H200 host: 1.9x faster on the CPU). The candidate pinned to the CPU is measured there beside the others on
    the accelerator, and if chosen, its bundle says so and the agent runs it on the CPU, not the GPU."""
    from dataclasses import replace

    from fastapi.testclient import TestClient

    from edgewise.agent.runner import AgentConfig, build_agent
    from edgewise.bundle import read_bundle, write_bundle
    from edgewise.optimize.pipeline import _runtime, optimize
    from edgewise.optimize.search import SearchOptions
    from edgewise.profile.openvino import runtime_of

    (tmp_path / "t.toml").write_text(STAND_IN)
    target = load_target(str(tmp_path / "t.toml"))
    opts = SearchOptions(latency_runs=5, measure_memory=False, torch_passes=False, only=("baseline-fused-cpu",))
    out = optimize(trained_cnn_dir, "digits", target, tmp_path / "o", opts)
    c = next(c for c in out.result.candidates if c.id == "baseline-fused-cpu")
    assert c.status == "ok" and c.metrics["accuracy_drop_points"] == 0, c.reason
    assert runtime_of(c.model) == "onnxruntime:CPUExecutionProvider"
    assert c.recipe[-2:][0]["pass"] == "runtime" and c.recipe[-2]["providers"] == ["CPUExecutionProvider"]
    assert c.metrics["latency_source"] == "measured (ONNX Runtime CPU, this machine)"
    assert out.result.baseline.metrics["latency_source"] == "measured (ONNX Runtime Azure, this machine)"
    # bundled as optimize bundles the chosen model (the starting model may have measured faster here)
    man = replace(read_bundle(out.bundle), files={}, runtime=_runtime(c.model, target), target=str(tmp_path / "t.toml"))
    assert man.runtime == {"engine": "onnxruntime", "providers": ["CPUExecutionProvider"], "threads": 1}
    cpu = write_bundle(tmp_path / "cpu", replace(man, name="on-cpu"), {"model.onnx": c.model.SerializeToString()})
    accel = write_bundle(tmp_path / "accel", replace(man, name="on-accel", runtime=_runtime(out.result.baseline.model,
                                                                                             target)),
                         {"model.onnx": out.result.baseline.model.SerializeToString()})
    agent = build_agent(AgentConfig(bundles=[cpu, accel], tier="node", data_dir=tmp_path / "a"))
    try:
        client = TestClient(agent.app)
        for name in ("on-cpu", "on-accel"):
            r = client.post(f"/predict?model={name}", json={"inputs": digits.test.x[:8].tolist()})
            assert r.status_code == 200, r.text
        eps = client.get("/health").json()["models"]["execution_providers"]
    finally:
        agent.close()
    assert eps["on-cpu"]["wanted"] == ["CPUExecutionProvider"] and eps["on-cpu"]["running_on"] == "CPUExecutionProvider"
    assert eps["on-accel"]["running_on"] == "AzureExecutionProvider", eps
    assert not eps["on-cpu"].get("fallback"), eps
