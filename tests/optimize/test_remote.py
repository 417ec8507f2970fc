"""Measuring on the device itself (issue 12): the search uploads its candidates to a second agent on loopback
(`agent --allow-bench`), gets one interleaved latency run back, and labels the figures with where they came
from; an agent that does not allow it, or is not there, is a clear error."""

from __future__ import annotations

import io
import json

import numpy as np
import onnx
import pytest

from edgewise.errors import ProfileError
from edgewise.targets import load_target

from ..harness import AgentProc, free_port

ONLY = ("baseline-fp32", "baseline-fused", "baseline-int8-minmax")


@pytest.fixture(scope="module")
def bench_agent(tmp_path_factory):  # type: ignore[no-untyped-def]
    agent = AgentProc(["--tier", "server", "--allow-bench"], free_port(), tmp_path_factory.mktemp("bench-agent"))
    agent.start()
    yield agent
    agent.kill()


def _search(trained_cnn_dir, digits, url: str | None):  # type: ignore[no-untyped-def]
    from edgewise.optimize.search import SearchOptions, finalize, search
    from edgewise.source import fit_data, load_source

    opts = SearchOptions(latency_runs=20, measure_memory=False, torch_passes=False, calibration_samples=64,
                         only=ONLY, measure_on=url)
    src, splits = fit_data(load_source(trained_cnn_dir), digits)
    r = search(src, splits, load_target("cortex-a"), opts)
    finalize(r, splits, runs=20)
    return r


@pytest.mark.e2e
def test_the_search_times_its_candidates_on_a_remote_agent(bench_agent, trained_cnn_dir, digits):
    r = _search(trained_cnn_dir, digits, bench_agent.url)
    host = f"via {bench_agent.url})"
    measured = [c for c in [r.baseline, *r.candidates] if c.status == "ok"]
    assert {c.id for c in measured} == set(ONLY)
    for c in measured:
        assert c.metrics["latency_source"].startswith("measured on the device (ONNX Runtime CPU, "), c.metrics
        assert c.metrics["latency_source"].endswith(host) and c.metrics["latency_p50_ms"] > 0
    assert r.final["latency_source"].endswith(host)
    assert any(f"latency and fidelity are measured on the device at {bench_agent.url} (running on "
               "CPUExecutionProvider)" in n for n in r.notes), r.notes
    # the same machine: the device's outputs are this machine's, so fidelity matches a local search's
    local = _search(trained_cnn_dir, digits, None)
    for c in measured:
        other = next(x for x in [local.baseline, *local.candidates] if x.id == c.id)
        assert c.metrics["accuracy_drop_points"] == pytest.approx(other.metrics["accuracy_drop_points"], abs=1e-9)
    bench = bench_agent.get("/health")["bench"]
    # each distinct model uploaded once (the fused model may equal the baseline byte for byte), then several runs
    from edgewise.profile.remote import RemoteBench

    # every distinct model (candidates, and the per-layer sensitivity models) uploaded once; runs: search + final
    assert bench["uploads"] == len(RemoteBench.at(bench_agent.url)._uploaded) >= len(ONLY) - 1, bench
    assert bench["runs"] >= 2, bench
    assert bench["inferences"] >= 2 * len(ONLY), bench  # every candidate's validation outputs, computed there
    # what the device is (its CPU decides NNCF's weight bits): this machine, here
    import platform

    from edgewise.profile import cpu

    assert RemoteBench.at(bench_agent.url).device_machine()["cpu_flags"] == bench["machine"]["cpu_flags"] == cpu.flags()
    assert bench["machine"]["arch"] == platform.machine()


@pytest.mark.e2e
def test_an_agent_that_does_not_allow_it_or_is_not_there_is_a_clear_error(trained_cnn_dir, digits, tmp_path):
    plain = AgentProc(["--tier", "server"], free_port(), tmp_path / "plain").start()
    try:
        with pytest.raises(ProfileError, match="start it with --allow-bench"):
            _search(trained_cnn_dir, digits, plain.url)
    finally:
        plain.kill()
    with pytest.raises(ProfileError, match="cannot measure on the device at http://127.0.0.1:"):
        _search(trained_cnn_dir, digits, f"http://127.0.0.1:{free_port()}")
    from edgewise.profile.remote import RemoteBench

    with pytest.raises(ProfileError, match="the agent's URL"):
        RemoteBench("orin:8090")


def test_the_bench_endpoints_refuse_what_they_cannot_run(trained_cnn_dir, tmp_path):
    from fastapi.testclient import TestClient

    from edgewise.agent.runner import AgentConfig, build_agent
    from edgewise.profile import cpu
    from edgewise.profile import make_session as build_session
    from edgewise.source import load_source

    agent = build_agent(AgentConfig(tier="server", data_dir=tmp_path / "a", allow_bench=True))
    try:
        c = TestClient(agent.app)
        assert c.post("/v1/bench/models", content=b"not onnx at all").status_code == 422
        model = load_source(trained_cnn_dir).model
        mid = c.post("/v1/bench/models", content=model.SerializeToString()).json()["id"]
        name = model.graph.input[0].name
        shape = [1, *[d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]]

        def npz(**arrays: np.ndarray) -> bytes:
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            return buf.getvalue()

        good = npz(**{name: np.zeros(shape, np.float32)})
        r = c.post(f"/v1/bench/run?models={mid}&runs=5&warmup=1", content=good)
        assert r.status_code == 200 and r.json()["latency"][mid]["runs"] == 5, r.text
        assert r.json()["running_on"][mid] == "CPUExecutionProvider"
        local = build_session(model).run(None, {name: np.ones(shape, np.float32)})[0]
        r = c.post(f"/v1/bench/infer?model={mid}", content=npz(**{name: np.ones(shape, np.float32)}))
        assert r.status_code == 200 and r.headers["x-running-on"] == "CPUExecutionProvider", r.text
        with np.load(io.BytesIO(r.content), allow_pickle=False) as z:
            np.testing.assert_allclose(z["out0"], local, rtol=1e-6)
        assert c.post(f"/v1/bench/infer?model=ffff{mid[4:]}", content=good).status_code == 422
        for query, body, why in ((f"models=ffff{mid[4:]}", good, "no uploaded model"),
                                 (f"models={mid}&runs=0", good, "runs must be"),
                                 (f"models={mid}", npz(other=np.zeros(3, np.float32)), "lacks input"),
                                 (f"models={mid}", npz(**{name: np.zeros((1, 7), np.float32)}), "cannot run"),
                                 (f"models={mid}", b"PK garbage", "not a valid .npz")):
            r = c.post(f"/v1/bench/run?{query}", content=body)
            assert r.status_code == 422 and why in r.json()["error"], (query, r.text)
        r = c.post(f"/v1/bench/memory?model={mid}", content=good)  # a fresh process on the device
        assert r.status_code == 200 and r.json()["running_on"] == "CPUExecutionProvider", r.text
        assert r.json()["rss_delta_bytes"] > 0 and r.json()["machine"]["cores"] >= 1
        for query, body, why in ((f"model=ffff{mid[4:]}", good, "no uploaded model"),
                                 (f"model={mid}&threads=0", good, "threads must be >= 1"),
                                 (f"model={mid}", npz(other=np.zeros(3, np.float32)), "memory probe failed"),
                                 (f"model={mid}", b"PK garbage", "not a valid .npz")):
            r = c.post(f"/v1/bench/memory?{query}", content=body)
            assert r.status_code == 422 and why in r.json()["error"], (query, r.text)
        bench = json.loads(c.get("/health").text)["bench"]
        assert bench.pop("machine")["cpu_flags"] == cpu.flags()  # what the device is, for recipes that depend on it
        assert bench == {"uploads": 1, "runs": 1, "inferences": 1, "memory_probes": 1}
    finally:
        agent.close()


@pytest.mark.e2e
def test_a_model_over_the_usual_body_cap_is_uploaded_and_measured_on_the_device(bench_agent):
    """A 40 MB candidate (a detector's size) goes to the bench routes; every other route keeps its 16 MB cap."""
    import socket

    from onnx import TensorProto, helper, numpy_helper

    from edgewise.profile.remote import RemoteBench

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(64, 160_000)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "wide",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 160_000])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert model.ByteSize() > 40e6
    remote = RemoteBench.at(bench_agent.url)
    mid = remote.upload(model)
    stats, where = remote.run([mid], {"x": np.ones((1, 64), np.float32)}, runs=3, warmup=1, threads=1,
                              providers=("CPUExecutionProvider",))
    assert stats[0].p50_ms > 0 and where == ["CPUExecutionProvider"]
    with socket.create_connection(("127.0.0.1", bench_agent.port), timeout=30) as sock:  # a 17 MB body, declared
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (17 * 2**20))
        assert sock.recv(64).split()[1] == b"413"


@pytest.mark.e2e
def test_bench_remote_measures_models_side_by_side_on_the_device(bench_agent, trained_cnn_dir, tmp_path):
    from ..harness import ew

    out = tmp_path / "bench.json"
    proc = ew("bench", str(trained_cnn_dir), "--data", "digits", "--runs", "20", "--remote", bench_agent.url,
              "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "latency and peak memory measured on the device (ONNX Runtime CPU" in proc.stdout, proc.stdout
    row = json.loads(out.read_text())[0]
    assert row["latency_1t"]["runs"] == 20 and row["measured_on"].endswith(f"via {bench_agent.url})")
    assert row["peak_memory"]["running_on"] == "CPUExecutionProvider" and row["peak_memory"]["rss_delta_bytes"] > 0
    assert "throughput_b1_1t" not in row


@pytest.mark.e2e
def test_an_nncf_candidate_travels_with_its_openvino_ir_and_runs_on_the_device(bench_agent, trained_cnn_dir, digits):
    """NNCF's int8 runs as an OpenVINO IR in place of the ONNX graph: the device gets the IR too."""
    pytest.importorskip("openvino", reason="OpenVINO is installed by `make test` (the openvino extra)")
    from edgewise.optimize.search import SearchOptions, search
    from edgewise.source import fit_data, load_source

    opts = SearchOptions(latency_runs=20, measure_memory=True, torch_passes=False, calibration_samples=64,
                         only=("baseline-fp32", "baseline-openvino-nncf-int8"), measure_on=bench_agent.url,
                         max_accuracy_drop=100)
    probes = bench_agent.get("/health")["bench"]["memory_probes"]
    src, splits = fit_data(load_source(trained_cnn_dir), digits)
    r = search(src, splits, load_target("x86-server"), opts)
    nncf = next(c for c in r.candidates if c.id == "baseline-openvino-nncf-int8")
    assert nncf.status == "ok", nncf.reason
    assert nncf.metrics["latency_source"].startswith("measured on the device (OpenVINO CPU, "), nncf.metrics
    # peak memory too, in a fresh process on the device, with the IR it runs (not the fp32 ONNX it carries)
    assert nncf.metrics["peak_memory_source"] == nncf.metrics["latency_source"] and nncf.metrics["peak_memory_bytes"] > 0
    assert r.baseline.metrics["peak_memory_source"].startswith("measured on the device (ONNX Runtime CPU, ")
    assert bench_agent.get("/health")["bench"]["memory_probes"] == probes + 2


def test_a_model_the_device_cannot_load_is_a_clear_422_not_a_crash(trained_cnn_dir, tmp_path):
    from fastapi.testclient import TestClient

    from edgewise.agent.runner import AgentConfig, build_agent
    from edgewise.profile.openvino import IR_KEY
    from edgewise.source import load_source

    model = load_source(trained_cnn_dir).model
    model.metadata_props.add(key=IR_KEY, value="0" * 64)  # names an IR that was never uploaded
    model.metadata_props.add(key="edgewise.runtime", value="openvino:CPU")
    agent = build_agent(AgentConfig(tier="server", data_dir=tmp_path / "a", allow_bench=True))
    try:
        c = TestClient(agent.app)
        mid = c.post("/v1/bench/models", content=model.SerializeToString()).json()["id"]
        buf = io.BytesIO()
        np.savez(buf, **{model.graph.input[0].name: np.zeros((1, 1, 8, 8), np.float32)})
        r = c.post(f"/v1/bench/run?models={mid}&runs=2", content=buf.getvalue())
        assert r.status_code == 422 and "cannot be loaded here" in r.json()["error"], r.text
        assert c.post("/v1/bench/ir", content=b"not an npz").status_code == 422
    finally:
        agent.close()


@pytest.mark.e2e
def test_more_candidates_than_the_device_keeps_are_measured_in_groups(bench_agent):
    """The device holds 24 uploaded models; a search with pruned and distilled students has ~30 candidates.
    Found trying `optimize --measure-on` on a zoo CNN: the run failed with 'no uploaded model'. Now they are
    measured in groups, each with the first model (the search's starting model)."""
    from onnx import TensorProto, helper

    from edgewise.profile.remote import RemoteBench

    def tiny(k: int) -> onnx.ModelProto:  # distinct bytes, so distinct ids
        g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], f"relu{k}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    remote = RemoteBench.at(bench_agent.url)
    ids = [remote.upload(tiny(k)) for k in range(30)]
    assert len(set(ids)) == 30 and remote.keeps == 24  # the device said how many it keeps
    runs_before = bench_agent.get("/health")["bench"]["runs"]
    stats, where = remote.run(ids, {"x": np.ones((1, 8), np.float32)}, runs=3, warmup=1, threads=1,
                              providers=("CPUExecutionProvider",))
    assert len(stats) == 30 and all(s.runs == 3 and s.p50_ms > 0 for s in stats)
    assert where == ["CPUExecutionProvider"] * 30
    assert bench_agent.get("/health")["bench"]["runs"] == runs_before + 2  # 1 + 23, then 1 + 6


def test_a_gpu_targets_cpu_candidate_is_timed_on_the_devices_cpu(bench_agent, trained_cnn_dir, digits, tmp_path):
    """With --measure-on, the device itself decides whether its accelerator ran the starting model, and the
    candidate pinned to its CPU is timed there on the CPU (ORT's Azure provider stands in for the GPU, as in
    test_gpu)."""
    import onnxruntime as ort

    from edgewise.optimize.search import SearchOptions, search
    from edgewise.source import fit_data, load_source

    from .test_gpu import STAND_IN

    if "AzureExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this ONNX Runtime build has no Azure provider to stand in for a GPU")
    (tmp_path / "t.toml").write_text(STAND_IN)
    opts = SearchOptions(latency_runs=5, measure_memory=False, torch_passes=False, only=("baseline-fused-cpu",),
                         measure_on=bench_agent.url)
    src, splits = fit_data(load_source(trained_cnn_dir), digits)
    r = search(src, splits, load_target(str(tmp_path / "t.toml")), opts)
    c = next(c for c in r.candidates if c.id == "baseline-fused-cpu")
    assert c.status == "ok", c.reason
    assert c.metrics["latency_source"].startswith("measured on the device (ONNX Runtime CPU, "), c.metrics
    assert r.baseline.metrics["latency_source"].startswith("measured on the device (ONNX Runtime Azure, "), r.baseline
    # a device whose accelerator does not start (jetson-orin's TensorRT and CUDA on this CPU-only agent)
    r = search(src, splits, load_target("jetson-orin"), opts)
    assert "baseline-fused-cpu" not in {c.id for c in r.candidates} | set(r.not_tried)
    assert ("baseline-fused-cpu not built: TensorrtExecutionProvider did not run the starting model on the device "
            "either") in r.notes, r.notes
