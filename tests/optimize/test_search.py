
import pytest

from edgewise.data import load_splits
from edgewise.optimize.pipeline import optimize
from edgewise.optimize.search import search
from edgewise.source import fit_data, load_source
from edgewise.targets import load_target


@pytest.fixture(scope="module")
def edge_node_result(trained_cnn_dir, digits):
    from edgewise.optimize.search import SearchOptions

    opts = SearchOptions(latency_runs=30, measure_memory=True, finetune_epochs=2, finetune_min_steps=60,
                         distill_epochs=4, distill_min_steps=80, calibration_samples=64)
    src, splits = fit_data(load_source(trained_cnn_dir), digits)
    return search(src, splits, load_target("edge-node"), opts)


def test_every_offered_candidate_ran_on_onnxruntime(edge_node_result):
    r = edge_node_result
    assert r.chosen is not None and r.chosen.feasible
    for c in r.candidates:
        assert c.status == "rejected" or "score" in c.metrics, c.id
    parents = {c.parent for c in r.candidates}
    assert parents == {"baseline", "pruned", "distilled"}
    assert any(c.precision == "int4" for c in r.candidates) and any(c.id.endswith("ort-defaults") for c in r.candidates)


def test_a_target_that_runs_fp16_gets_an_fp16_candidate_measured_like_the_others(edge_node_result):
    r = edge_node_result
    fp16 = next(c for c in r.candidates if c.id == "baseline-fp16")
    assert fp16.precision == "fp16" and fp16.status == "ok", fp16.reason
    assert 0.45 < fp16.metrics["size_bytes"] / r.baseline.metrics["size_bytes"] < 0.6  # half the weight bytes
    assert fp16.metrics["accuracy_drop_points"] <= 0.5 and fp16.metrics["latency_p50_ms"] > 0
    inputs = {i.name: i.type.tensor_type.elem_type for i in fp16.model.graph.input}
    assert set(inputs.values()) == {1}  # inputs stay float32: the device feeds it what it fed fp32


def test_latency_objective_never_ships_a_slower_model(edge_node_result):
    r = edge_node_result
    assert r.chosen.metrics["latency_p50_ms"] <= r.baseline.metrics["latency_p50_ms"]
    assert r.chosen.metrics["accuracy_drop_points"] <= 1.0
    assert any(c.pareto for c in r.candidates + [r.baseline])
    assert r.sensitivity, "per-layer sensitivity is always measured for the report"


def test_memory_is_measured_in_a_fresh_process(edge_node_result):
    mem = edge_node_result.baseline.metrics["peak_memory_bytes"]
    assert mem and mem > 100_000


def test_mcu_target_gets_only_int8(trained_cnn_dir, digits, fast_opts):
    src, splits = fit_data(load_source(trained_cnn_dir), digits)
    r = search(src, splits, load_target("mcu-256k"), fast_opts)
    assert r.chosen is not None and r.chosen.precision == "int8"
    assert all(c.precision in ("int8", "fp32") for c in r.candidates)
    assert r.chosen.metrics["peak_memory_bytes"] <= 64 * 1024
    assert "estimated" in r.chosen.metrics["latency_source"]


def test_a_budget_nothing_meets_says_why(trained_cnn_dir, digits, fast_opts, tmp_path):
    tiny = tmp_path / "tiny.toml"
    tiny.write_text('name = "tiny"\nram_bytes = 100\nflash_bytes = 2000\nlatency_budget_ms = 10\n'
                    'precisions = ["int8"]\nobjective = "size"\ntier = "endpoint"\nmacs_per_second = 1e6\n')
    out = tmp_path / "out"
    outcome = optimize(trained_cnn_dir, "digits", load_target(str(tiny)), out, fast_opts)
    assert outcome.bundle is None and not (out / "bundle").exists()
    assert "nothing fits tiny" in outcome.result.why and "RAM, target has" in outcome.result.why
    assert (out / "report.html").is_file(), "the report still explains the failure"


def test_pipeline_writes_bundle_and_reports(trained_cnn_dir, fast_opts, tmp_path):
    from edgewise.bundle import verify_bundle

    out = tmp_path / "opt"
    outcome = optimize(trained_cnn_dir, "digits", load_target("cortex-a"), out, fast_opts, version="1.2.3")
    man = verify_bundle(out / "bundle")
    for key in ("accuracy", "baseline_accuracy", "size_bytes", "baseline_size_bytes", "latency_p50_ms",
                "baseline_latency_p50_ms"):
        assert key in man.metrics, key
    assert man.version == "1.2.3" and man.labels[:3] == ["0", "1", "2"] and man.recipe[0]["candidate"]
    assert man.inputs[0]["shape"][1:] == [1, 8, 8]
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and outcome.report["chosen"]["id"] in html


def test_unlabelled_data_scores_fidelity_to_the_starting_model(trained_cnn_dir, fast_opts, tmp_path):
    import numpy as np

    x = load_splits("digits").test.x
    np.savez(tmp_path / "unlabelled.npz", x=x.reshape(len(x), -1))  # flat rows: reshaped to the model's input
    fast_opts.torch_passes = False
    outcome = optimize(trained_cnn_dir, str(tmp_path / "unlabelled.npz"), load_target("cortex-a"),
                       tmp_path / "o", fast_opts)
    assert outcome.report["accuracy_kind"] == "top1_agreement_with_fp32"
    assert outcome.result.final["baseline_accuracy"] == 1.0


@pytest.mark.e2e
def test_real_third_party_model_keeps_99_percent_agreement(rapidocr_cls, fast_opts, tmp_path):
    """PaddleOCR's MobileNetV3 text-direction classifier, optimized for a Raspberry-Pi class target."""
    fast_opts.sensitivity_max_layers = 3
    fast_opts.calibration_samples = 32
    outcome = optimize(rapidocr_cls, "textlines:160", load_target("cortex-a"), tmp_path / "o", fast_opts)
    f = outcome.result.final
    assert outcome.bundle is not None
    assert f["top1_agreement"] >= 0.99
    assert f["latency_p50_ms"] <= f["baseline_latency_p50_ms"] * 1.15  # noise margin; never knowingly slower


def test_recipe_patterns_run_one_pass_alone(trained_cnn_dir, digits, fast_opts):
    fast_opts.only = ("baseline-int8-percentile-s7",)
    src, splits = fit_data(load_source(trained_cnn_dir), digits)
    r = search(src, splits, load_target("cortex-a"), fast_opts)
    assert [c.id for c in r.candidates] == ["baseline-int8-percentile-s7"]
    assert r.chosen is not None and r.chosen.id in ("baseline-int8-percentile-s7", "baseline-fp32")


def test_a_slower_choice_is_caught_by_the_confirmation_run(trained_cnn_dir, digits, fast_opts):
    from edgewise.optimize.search import finalize

    # Prepare: int8 dynamic with ConvInteger is several times slower than fp32 on x86 CPUs
    fast_opts.only = ("baseline-int8-dynamic-conv",)
    src, splits = fit_data(load_source(trained_cnn_dir), digits)
    r = search(src, splits, load_target("cortex-a"), fast_opts)
    slow = r.candidates[0]
    assert slow.metrics["latency_p50_ms"] > 1.3 * r.baseline.metrics["latency_p50_ms"]
    r.chosen = slow  # as if noise had made it look fast during the search
    # Execute
    final = finalize(r, splits, runs=100)
    # Assert
    assert r.chosen is r.baseline and final["speedup"] > 0
    assert any("never slower" in n for n in r.notes)


def test_a_choice_further_down_on_test_than_the_tolerance_says_so(trained_cnn_dir, digits, fast_opts):
    """Chosen on validation, checked on test: a model over the tolerance there is named, with both figures."""
    import onnx
    from onnx import numpy_helper

    from edgewise.optimize.search import finalize

    fast_opts.only = ("baseline-fused",)
    src, splits = fit_data(load_source(trained_cnn_dir), digits)
    r = search(src, splits, load_target("edge-server"), fast_opts)  # accuracy objective: no latency swap
    fused = r.chosen = r.candidates[0]
    finalize(r, splits, runs=20, tolerance=1.0)
    assert r.final["accuracy"] == r.final["baseline_accuracy"]
    assert not any("points down on the test split" in n for n in r.notes), r.notes
    # the same graph, but it never answers 3 (as if validation had hidden it): about 10 points down on test
    damaged = onnx.ModelProto()
    damaged.CopyFrom(fused.model)
    (gemm,) = [n for n in damaged.graph.node if n.op_type == "Gemm"]
    (bias,) = [t for t in damaged.graph.initializer if t.name == gemm.input[2]]
    b = numpy_helper.to_array(bias).copy()
    b[3] = -1e4
    bias.CopyFrom(numpy_helper.from_array(b, bias.name))
    fused.model = damaged
    finalize(r, splits, runs=20, tolerance=1.0)
    (note,) = [n for n in r.notes if "points down on the test split" in n]
    drop = (r.final["baseline_accuracy"] - r.final["accuracy"]) * 100
    assert drop > 5 and f"{drop:.2f} points down on the test split ({len(splits.test)} samples), over the " \
        "1-point tolerance it met on validation (0.00 down)" in note, note


def test_the_close_contenders_are_measured_again_among_themselves():
    """Candidates within 15% of the fastest (and the starting model) get a longer run of their own; one far
    behind keeps its first figure, and so does one that breaks the fidelity tolerance."""
    import numpy as np
    import onnx
    from onnx import helper

    from edgewise.optimize.candidates import Candidate
    from edgewise.optimize.measure import Clock, Runner, runoff
    from edgewise.optimize.options import SearchOptions
    from edgewise.profile import make_session

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    first = {"baseline-fp32": 1.3, "a": 1.0, "b": 1.1, "c": 2.0, "d": 1.05}
    cands = []
    for cid, ms in first.items():
        c = Candidate(cid, cid, "baseline", "fp32", [], model)
        c.metrics.update({"latency_p50_ms": ms, "accuracy_drop_points": 5.0 if cid == "d" else 0.0,
                          "fidelity_kind": "top1_agreement", "size_bytes": 100})
        cands.append(c)
    sessions = {c.id: make_session(model) for c in cands}
    logs: list[str] = []
    target = load_target("edge-node")
    runoff(sessions, cands, cands[0], target, SearchOptions(latency_runs=10), {"x": np.ones((1, 64), np.float32)},
           10, Runner(target), Clock(None), logs.append)
    again = {c.id for c in cands if "latency_first_p50_ms" in c.metrics}
    assert again == {"baseline-fp32", "a", "b"}, again  # c is 2x the fastest; d misses the tolerance
    assert logs and "3 closest" in logs[0]
    for c in cands:
        if c.id in again:
            assert c.metrics["latency_first_p50_ms"] == first[c.id] and c.metrics["latency_p50_ms"] < 1.0
            assert c.metrics["latency_ms"]["runs"] == 30
