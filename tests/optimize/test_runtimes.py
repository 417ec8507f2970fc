"""Choosing the runtime, not only the recipe: OpenVINO candidates measured beside ONNX Runtime's, the
choice recorded in the bundle, and the agent loading what the bundle names (or falling back, and saying so)."""

from __future__ import annotations

import numpy as np
import pytest

from edgewise.targets import load_target

pytest.importorskip("openvino", reason="OpenVINO is installed by `make test` (the openvino extra)")


@pytest.fixture(scope="module")
def x86_result(trained_cnn_dir, digits):
    from edgewise.optimize.search import SearchOptions, search
    from edgewise.source import fit_data, load_source

    opts = SearchOptions(latency_runs=20, measure_memory=False, torch_passes=False, calibration_samples=64,
                         only=("baseline-fp32", "baseline-openvino*", "baseline-int8-minmax"), max_accuracy_drop=100)
    src, splits = fit_data(load_source(trained_cnn_dir), digits)
    return search(src, splits, load_target("x86-server"), opts)


def test_openvino_candidates_are_built_and_measured_beside_onnx_runtimes(x86_result):
    from edgewise.profile.openvino import runtime_of

    by = {c.id: c for c in x86_result.candidates}
    fp32, int8 = by["baseline-openvino-fp32"], by["baseline-openvino-nncf-int8"]
    assert fp32.status == int8.status == "ok", (fp32.reason, int8.reason)
    assert runtime_of(fp32.model) == "openvino:CPU:f32" and runtime_of(int8.model) == "openvino:CPU"
    assert runtime_of(by["baseline-openvino-auto"].model) == "openvino:CPU"
    # NNCF at its defaults on a CNN trained for 8 epochs: a few validation samples (of 359) may flip
    assert fp32.metrics["accuracy_drop_points"] <= 0.5 and int8.metrics["accuracy_drop_points"] <= 4.0
    from edgewise.profile.openvino import ir_files

    files = ir_files(int8.model)  # NNCF's int8 on OpenVINO's own graph, as an IR beside the fp32 ONNX fallback
    assert set(files) == {"model.xml", "model.bin"} and len(files["model.bin"]) < 0.5 * fp32.model.ByteSize()
    assert int8.metrics["size_bytes"] == int8.model.ByteSize() + sum(len(b) for b in files.values())
    for c in (fp32, int8, by["baseline-int8-minmax"]):  # one interleaved measurement for every runtime
        assert c.metrics["latency_p50_ms"] > 0


def test_a_device_openvino_lacks_here_is_reported_not_dropped(trained_cnn_dir, digits):
    from edgewise.optimize.search import SearchOptions, search
    from edgewise.source import fit_data, load_source

    opts = SearchOptions(latency_runs=5, measure_memory=False, torch_passes=False, only=("baseline-openvino-fp32",))
    src, splits = fit_data(load_source(trained_cnn_dir), digits)
    r = search(src, splits, load_target("intel-igpu"), opts)  # openvino_device = GPU: none on this machine
    c = next(c for c in r.candidates if c.id == "baseline-openvino-fp32")
    assert c.status == "rejected" and "no GPU device here" in c.reason, c.reason


@pytest.mark.parametrize("device", ["CPU", "NPU"])
def test_the_agent_runs_a_bundle_on_openvino_or_falls_back_and_says_so(trained_cnn_dir, tmp_path, device, digits):
    import onnx
    from fastapi.testclient import TestClient

    from edgewise.agent.runner import AgentConfig, build_agent
    from edgewise.bundle import Manifest, write_bundle
    from edgewise.modelio import inputs, outputs

    model = onnx.load(str(trained_cnn_dir / "model.onnx"))
    man = Manifest("cnn", "1.0.0", "x86-server", [s.as_dict() for s in inputs(model)],
                   [s.as_dict() for s in outputs(model)], [str(i) for i in range(10)], {}, "fp32", [], {},
                   task="classification", runtime={"engine": "openvino", "device": device, "precision": "f32",
                                                   "threads": 1})
    bundle = write_bundle(tmp_path / "bundle", man, {"model.onnx": model.SerializeToString()})
    agent = build_agent(AgentConfig(bundles=[bundle], tier="server", data_dir=tmp_path / "a"))
    try:
        client = TestClient(agent.app)
        x = digits.test.x[:8]
        r = client.post("/predict", json={"inputs": x.tolist()})
        assert r.status_code == 200, r.text
        import onnxruntime as ort

        ref = ort.InferenceSession(str(trained_cnn_dir / "model.onnx")).run(None, {"input": x})[0]
        got = np.array(r.json()["outputs"][man.outputs[0]["name"]]["data"])
        assert np.abs(got - ref).max() < 1e-3 and [v["class"] for v in r.json()["results"]] == ref.argmax(1).tolist()
        ep = client.get("/health").json()["models"]["execution_providers"]["cnn"]
        # the thread count the bundle was measured with is the one it runs with, unless the agent sets its own
        from dataclasses import replace

        assert agent.inference.models._threads(replace(man, runtime={**man.runtime, "threads": 0})) == 0
    finally:
        agent.close()
    assert ep["wanted"] == [f"OpenVINO:{device}"]
    if device == "CPU":
        assert ep["running_on"] == "OpenVINO:CPU" and ep["fallback"] is None
    else:  # no NPU here: ONNX Runtime's CPU with the same ONNX file, and /health says why
        assert ep["running_on"] == "CPUExecutionProvider" and "no NPU device here" in ep["fallback"]


@pytest.mark.e2e  # a real agent process
def test_an_agent_without_openvino_serves_the_same_bundle_on_onnx_runtime(trained_cnn_dir, tmp_path, digits):
    """A device where OpenVINO is not installed: a real agent process whose `import openvino` fails."""
    import json
    import os

    import onnx

    from edgewise.bundle import Manifest, write_bundle
    from edgewise.modelio import inputs, outputs

    from ..harness import AgentProc, free_port

    model = onnx.load(str(trained_cnn_dir / "model.onnx"))
    man = Manifest("cnn", "1.0.0", "x86-server", [s.as_dict() for s in inputs(model)],
                   [s.as_dict() for s in outputs(model)], [str(i) for i in range(10)], {}, "fp32", [], {},
                   task="classification", runtime={"engine": "openvino", "device": "CPU", "threads": 1})
    bundle = write_bundle(tmp_path / "bundle", man, {"model.onnx": model.SerializeToString()})
    shadow = tmp_path / "no-openvino" / "openvino"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('openvino is not installed on this device')\n")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(shadow.parent) + (os.pathsep + old if old else "")
    try:
        agent = AgentProc(["--bundle", str(bundle)], free_port(), tmp_path / "a").start()
    finally:
        os.environ.pop("PYTHONPATH") if old is None else os.environ.__setitem__("PYTHONPATH", old)
    try:
        status, body = agent.post("/predict", json.dumps({"inputs": digits.test.x[:4].tolist()}).encode())
        ep = agent.get("/health")["models"]["execution_providers"]["cnn"]
    finally:
        agent.kill()
    assert status == 200 and len(body["results"]) == 4
    assert ep["running_on"] == "CPUExecutionProvider" and "not installed" in ep["fallback"], ep


def test_an_optimized_bundle_carries_the_openvino_ir_and_the_agent_serves_it(trained_cnn_dir, tmp_path, digits,
                                                                               monkeypatch):
    """The NNCF int8 candidate's bundle carries model.xml/model.bin beside the fp32 ONNX, and the agent runs
    the IR on OpenVINO (the IR is what it runs: its outputs are int8-close, not the fp32 ONNX's)."""
    from fastapi.testclient import TestClient

    from edgewise.agent.runner import AgentConfig, build_agent
    from edgewise.bundle import read_bundle
    from edgewise.optimize.pipeline import optimize
    from edgewise.optimize.search import SearchOptions

    opts = SearchOptions(latency_runs=5, measure_memory=False, torch_passes=False, calibration_samples=64,
                         only=("baseline-openvino-nncf-int8",))
    out = optimize(trained_cnn_dir, "digits", load_target("x86-server"), tmp_path / "o", opts)
    nncf = next(c for c in out.result.candidates if c.id == "baseline-openvino-nncf-int8")
    assert nncf.status == "ok", nncf.reason
    bundle = out.bundle
    if out.result.chosen.id != nncf.id:  # the starting model measured faster here: bundle the candidate as optimize would
        from dataclasses import replace

        from edgewise.bundle import write_bundle
        from edgewise.optimize.pipeline import _runtime
        from edgewise.profile.openvino import ir_files

        man = replace(read_bundle(out.bundle), files={}, runtime=_runtime(nncf.model, load_target("x86-server")))
        bundle = write_bundle(tmp_path / "ir-bundle", man, {"model.onnx": nncf.model.SerializeToString(),
                                                            **ir_files(nncf.model)})
    man = read_bundle(bundle)
    assert man.runtime["engine"] == "openvino" and {"model.xml", "model.bin", "model.onnx"} <= set(man.files)
    agent = build_agent(AgentConfig(bundles=[bundle], tier="server", data_dir=tmp_path / "a"))
    try:
        r = TestClient(agent.app).post("/predict", json={"inputs": digits.test.x[:32].tolist()})
        assert r.status_code == 200, r.text
        acc = np.mean([v["class"] for v in r.json()["results"]] == digits.test.y[:32])
        got = np.array(r.json()["outputs"][man.outputs[0]["name"]]["data"])
        ep = TestClient(agent.app).get("/health").json()["models"]["execution_providers"][man.name]
    finally:
        agent.close()
    import onnxruntime as ort

    fp32 = ort.InferenceSession(str(trained_cnn_dir / "model.onnx")).run(None, {"input": digits.test.x[:32]})[0]
    assert acc >= 0.9 and ep["running_on"] == "OpenVINO:CPU"
    assert 1e-4 < np.abs(got - fp32).max() < 0.5 * np.abs(fp32).max()  # int8 arithmetic: the IR ran, not the ONNX
    # another process (`edgewise bench BUNDLE`) has not built the IR: loading the bundle brings it along
    from edgewise.errors import ModelError
    from edgewise.profile import make_session
    from edgewise.profile import openvino as ov_runtime
    from edgewise.source import load_source

    monkeypatch.setattr(ov_runtime, "_IR_CACHE", {})  # this process's other IRs stay for the other tests
    again = make_session(load_source(bundle).model).run(None, {"input": digits.test.x[:32]})[0]
    assert np.allclose(again, got, atol=1e-5)
    (bundle / "model.bin").write_bytes((bundle / "model.bin").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ModelError, match="not the IR the model names"):  # read_bundle checks no hashes: this does
        load_source(bundle)


def test_openvino_compiles_a_dynamic_batch_as_batch_one_and_still_answers_other_batches(trained_cnn_dir, digits):
    """OpenVINO runs a static shape faster (1.28x on MobileNetV3-small here); a batch of 3 still answers, from
    the dynamic graph compiled on first use, and the session still declares the model's own (any) batch."""
    from edgewise.profile import make_session
    from edgewise.profile.openvino import OpenVinoSession
    from edgewise.source import fit_data, load_source

    src, splits = fit_data(load_source(trained_cnn_dir), digits)
    ov, ort = OpenVinoSession(src.model, precision="f32"), make_session(src.model, threads=1)
    name = ort.get_inputs()[0].name
    assert ov.get_inputs()[0].shape[0] is None and ov._static is not None
    for n in (1, 3, 1):
        x = splits.test.x[:n].astype(np.float32)
        got, want = ov.run(None, {name: x})[0], ort.run(None, {name: x})[0]
        assert got.shape == want.shape and np.allclose(got, want, atol=1e-4), n
    assert ov._dynamic_request is not None  # the batch of 3 took the dynamic graph


@pytest.mark.e2e  # several seconds: in `make test`, out of `make test-fast`
def test_nncf_accuracy_control_is_tried_when_nncf_misses_the_tolerance(trained_cnn_dir, digits):
    """A tolerance nothing int8 can meet (-1 points): NNCF's default misses it, so NNCF with the output tail in
    float is tried, misses too, and then its accuracy control runs, scored with the search's own validation
    score, puts layers back in float and is tagged to run them at f32 as NNCF validated them."""
    from edgewise.optimize.search import SearchOptions, search
    from edgewise.profile.openvino import ir_files, runtime_of
    from edgewise.source import fit_data, load_source

    opts = SearchOptions(latency_runs=5, measure_memory=False, torch_passes=False, calibration_samples=64,
                         only=("baseline-openvino-nncf*",), max_accuracy_drop=-1)
    src, splits = fit_data(load_source(trained_cnn_dir), digits)
    r = search(src, splits, load_target("x86-server"), opts)
    by = {c.id: c for c in r.candidates}
    plain, ac = by["baseline-openvino-nncf-int8"], by["baseline-openvino-nncf-int8-accuracy"]
    tail = by["baseline-openvino-nncf-int8-tail"]
    assert plain.status == ac.status == tail.status == "ok", (plain.reason, ac.reason, tail.reason)
    assert runtime_of(ac.model) == "openvino:CPU:f32" and runtime_of(plain.model) == "openvino:CPU"
    assert any(s.get("accuracy_control") for s in ac.recipe), ac.recipe

    def quantizers(c) -> int:  # type: ignore[no-untyped-def]
        return ir_files(c.model)["model.xml"].count(b'type="FakeQuantize"')

    # not all layers back in float; on an AVX2 EPYC (7-bit weights) it put none of this small CNN's back
    assert 0 < quantizers(ac) <= quantizers(plain)
    assert 0 < quantizers(tail) < quantizers(plain) and any(s.get("float_ops") for s in tail.recipe)
    assert ac.metrics["accuracy_drop_points"] <= plain.metrics["accuracy_drop_points"]


def _planned(splits, decode: bool, drops: dict[str, float],  # type: ignore[no-untyped-def]
             parents=("baseline",), only=("*",)):
    """What a Planner plans for a one-conv model (with a box-decode Mul after it when `decode`), and whether
    each plan would be built given the validation drops so far. Planning only: nothing is built."""
    out, notes = _plans(splits, decode, drops, parents, only)
    return [(pl.id, pl.when()) for pl in out], notes


def _plans(splits, decode: bool, drops: dict[str, float],  # type: ignore[no-untyped-def]
           parents=("baseline",), only=("*",), **options):
    from onnx import TensorProto, helper, numpy_helper

    from edgewise.optimize.plan import Parent, Planner
    from edgewise.optimize.search import SearchOptions
    from edgewise.source import Source

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    stride = numpy_helper.from_array(np.full((1, 4, 1, 1), 8.0, np.float32), "stride")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c" if decode else "y"], name="head")]
    nodes += [helper.make_node("Mul", ["c", "stride"], ["y"], name="to_pixels")] if decode else []
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w, stride])
    src = Source("m", helper.make_model(g), [], {})
    state = {"drops": drops, "notes": [], "int8_within_tolerance": False}
    planner = Planner(src, splits, load_target("x86-server"), SearchOptions(only=only, **options), state,
                      lambda _m: None)
    out = planner.plans([Parent(name, name, lambda: (src.model, 0, [])) for name in parents])
    return out, state["notes"]


def test_a_graph_that_decodes_boxes_gets_nncf_with_its_tail_in_float_first(digits):
    """A head doing arithmetic on its last layer's output (a box decode) plans NNCF with that tail in float
    before NNCF's default, unconditionally; a classifier plans it only after the default missed, and accuracy
    control only when both missed."""

    def plans(decode: bool, drops: dict[str, float]):  # type: ignore[no-untyped-def]
        out, _ = _planned(digits, decode, drops, only=("baseline-openvino-nncf*",))
        return [(cid.removeprefix("baseline-openvino-nncf-int8") or "default", when) for cid, when in out]

    nothing: dict[str, float] = {}
    assert plans(True, nothing) == [("-tail", True), ("default", True), ("-accuracy", False)]
    assert plans(False, nothing) == [("default", True), ("-tail", False), ("-accuracy", False)]
    missed = {"baseline-openvino-nncf-int8": 3.0}
    assert plans(False, missed) == [("default", True), ("-tail", True), ("-accuracy", True)]
    assert plans(True, {**missed, "baseline-openvino-nncf-int8-tail": 0.2})[2] == ("-accuracy", False)


@pytest.mark.parametrize("saturates", [True, False])
def test_nncf_keeps_weights_to_7_bits_on_a_cpu_whose_int8_sums_saturate(digits, monkeypatch, saturates):
    """AVX2 without VNNI: NNCF's overflow fix on every layer (its default fixes the first only), and the
    recipe says so; a CPU with VNNI keeps NNCF's default."""
    from nncf.quantization.advanced_parameters import OverflowFix

    from edgewise.optimize import plan
    from edgewise.profile import cpu

    monkeypatch.setattr(cpu, "int8_saturates", lambda: saturates)
    plans, _ = _plans(digits, True, {}, only=("baseline-openvino-nncf*",))
    fixes = {pl.id: pl.recipe[0]["overflow_fix"] for pl in plans}
    assert len(fixes) == 3 and len(set(fixes.values())) == 1
    assert next(iter(fixes.values())).startswith("all layers" if saturates else "first layer")
    assert plan._nncf_advanced(saturates).overflow_fix == (OverflowFix.ENABLE if saturates
                                                           else OverflowFix.FIRST_LAYER)


@pytest.mark.parametrize("device_flags", [["avx2"], ["avx2", "avx512f", "avx512_vnni"]])
def test_with_measure_on_the_overflow_fix_follows_the_devices_cpu(digits, monkeypatch, device_flags):
    """Built on one kind of CPU, judged on another (`--measure-on`): the device's agent says what its CPU is,
    and NNCF's weights keep to 7 bits where the device's int8 sums saturate, whatever this machine is."""
    from edgewise.profile import cpu
    from edgewise.profile.remote import RemoteBench

    url = "http://device.invalid:8080"
    device = RemoteBench(url)
    device.machine = {"arch": "x86_64", "cpu": "EPYC", "cpu_flags": device_flags}  # as its /health says
    monkeypatch.setitem(RemoteBench._open, url, device)
    saturates = "avx512_vnni" not in device_flags
    monkeypatch.setattr(cpu, "int8_saturates", lambda: not saturates)  # this machine: the other kind
    plans, _ = _plans(digits, True, {}, only=("baseline-openvino-nncf*",), measure_on=url)
    fixes = {pl.recipe[0]["overflow_fix"] for pl in plans}
    assert fixes == {"all layers (7-bit weights: the device's CPU has no VNNI)" if saturates else "first layer"}


def test_the_cpu_is_read_for_its_int8_dot_products(monkeypatch):
    from edgewise.profile import cpu

    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    for have, saturates in ((["fma", "avx2"], True), (["avx2", "avx512f", "avx512_vnni"], False),
                            (["avx2", "avx_vnni"], False), ([], False)):
        monkeypatch.setattr(cpu, "_cpuinfo", lambda have=have: ("EPYC", frozenset(have)))
        assert cpu.int8_saturates() is saturates, have
        assert cpu.flags() == [f for f in cpu.REPORTED if f in have]
    assert cpu.saturates("x86_64", ["avx2"]) and not cpu.saturates("aarch64", ["asimd"])  # a device's report
    assert not cpu.saturates("AMD64", ["avx2", "avx_vnni"]) and not cpu.saturates("x86_64", [])
    monkeypatch.setattr(cpu.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: ("Cortex-A76", frozenset(["asimd", "asimddp"])))
    assert not cpu.int8_saturates() and cpu.flags() == ["asimd", "asimddp"]


def test_a_pruned_parent_far_past_the_tolerance_gets_no_quantized_children(digits):
    """A derived parent whose fp32 model is more than a point past the tolerance gets its fp32 candidate
    only (quantizing adds error), and a note says so; just past it, its children are still built: quantized,
    and on OpenVINO as it is (the smaller model on the runtime that may win for the larger one)."""
    far, notes = _planned(digits, True, {"pruned-fp32": 4.9}, parents=("baseline", "pruned"))
    pruned = {cid: when for cid, when in far if cid.startswith("pruned-")}
    assert pruned.pop("pruned-fp32") and pruned and not any(pruned.values()), pruned
    assert notes == ["pruned: its fp32 model is 4.90 points down, so its other candidates (quantized, other "
                     "runtimes) were not built"]
    near, notes = _planned(digits, True, {"pruned-fp32": 1.8}, parents=("baseline", "pruned"))
    assert all(dict(near)[c] for c in ("pruned-int8-minmax", "pruned-openvino-fp32", "pruned-openvino-auto"))
    assert not notes
    assert dict(far)["baseline-int8-minmax"]  # the starting model's own candidates are untouched


def test_nncf_accuracy_control_stops_at_the_time_budget(trained_cnn_dir, digits):
    import pytest

    from edgewise.errors import OptimizeError
    from edgewise.optimize.plan import Parent, Planner
    from edgewise.optimize.search import SearchOptions
    from edgewise.source import fit_data, load_source

    src, splits = fit_data(load_source(trained_cnn_dir), digits)
    calls: list[int] = []
    state = {"score": lambda outs, samples=None: calls.append(len(outs[0])) or 1.0, "building_over": lambda: True,
             "drops": {}, "notes": []}
    planner = Planner(src, splits, load_target("x86-server"), SearchOptions(calibration_samples=32), state,
                      lambda _m: None)
    parent = Parent("baseline", "starting model", lambda: (src.model, 0, []))
    with pytest.raises(OptimizeError, match="stopped at the time budget after 1 validation pass and 1 sample scores"):
        planner._nncf_plan(parent, "accuracy").build()
    assert calls == [1, len(splits.val)]  # NNCF's probe on one sample, then the float model on all of them


def test_peak_memory_of_an_openvino_candidate_is_measured_on_openvino_with_its_ir(x86_result, tmp_path):
    """The memory probe runs a candidate as it will run: NNCF's int8 as the IR on OpenVINO, not the fp32 ONNX
    it carries for devices without OpenVINO; without the IR beside it, it says so instead of measuring that."""
    from edgewise.errors import ModelError
    from edgewise.modelio import save_model
    from edgewise.profile.measure import measure_memory
    from edgewise.profile.openvino import ir_files

    by = {c.id: c for c in x86_result.candidates}
    nncf, ort_int8 = by["baseline-openvino-nncf-int8"], by["baseline-int8-minmax"]
    path = tmp_path / "nncf.onnx"
    save_model(nncf.model, path)
    with pytest.raises(ModelError, match="not beside it"):
        measure_memory(path)
    for name, data in ir_files(nncf.model).items():
        path.with_suffix(name[-4:]).write_bytes(data)
    probe = measure_memory(path)
    assert probe["running_on"] == "OpenVINO:CPU" and probe["rss_delta_bytes"] > 0
    save_model(ort_int8.model, tmp_path / "ort.onnx")
    assert measure_memory(tmp_path / "ort.onnx")["running_on"] == "CPUExecutionProvider"
