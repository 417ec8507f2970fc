import numpy as np
import pytest

from edgewise.agent.serve.cascade import CascadeConfig, Inference, PrivacyPolicy, probabilities
from edgewise.agent.serve.inputs import BadInput, validate
from edgewise.agent.serve.models import ModelBudgetExceeded, ModelManager, memory_estimate
from edgewise.agent.runner import AgentConfig
from edgewise.bundle import verify_bundle
from edgewise.errors import AgentError

from ..harness import make_bundle


@pytest.fixture(scope="module")
def two_bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("mm")
    return make_bundle(root / "a", "mlp", 1, "model-a", 0.5), make_bundle(root / "b", "cnn", 1, "model-b")


def test_lru_eviction_keeps_within_budget_and_reloads_on_demand(two_bundles):
    a, b = two_bundles
    na, nb = memory_estimate(a / "model.onnx"), memory_estimate(b / "model.onnx")
    mm = ModelManager(budget_bytes=na + nb - 1, policy="evict-lru")  # either fits, both do not
    mm.register(a), mm.register(b)
    mm.get("model-a")
    mm.get("model-b")  # does not fit beside model-a: model-a is evicted
    assert list(mm.health()["loaded"]) == ["model-b"] and mm.evictions == 1
    mm.get("model-a")
    assert mm.loads == 3 and mm.used_bytes() <= mm.budget


def test_refuse_policy_and_models_too_big_for_any_budget(two_bundles):
    a, b = two_bundles
    mm = ModelManager(budget_bytes=memory_estimate(b / "model.onnx") + 10, policy="refuse")
    mm.register(a), mm.register(b)
    mm.get("model-b")
    with pytest.raises(ModelBudgetExceeded, match="policy: refuse"):
        mm.get("model-a")
    with pytest.raises(ModelBudgetExceeded, match="budget"):
        ModelManager(budget_bytes=100).register(a)
    with pytest.raises(AgentError, match="unknown model"):
        mm.get("nope")


def test_budget_accounts_the_memory_optimize_measured_and_health_reports_the_live_rss(two_bundles, tmp_path):
    # Prepare: the same model, once with a measured peak in its manifest (as optimize writes it)
    import json
    import shutil

    from edgewise.bundle import read_bundle, write_bundle

    a, _ = two_bundles
    man = read_bundle(a)
    man.metrics["peak_memory_bytes"] = 40 * 2**20
    write_bundle(tmp_path / "measured", man, {"model.onnx": (a / "model.onnx").read_bytes()})
    estimate = memory_estimate(a / "model.onnx")
    # Execute
    mm = ModelManager(budget_bytes=64 * 2**20)
    mm.register(tmp_path / "measured")
    m = mm.get("model-a")
    health = json.loads(json.dumps(mm.health()))
    # Assert: the measured figure (larger than the estimate) is what the budget holds
    assert estimate < 40 * 2**20 and m.memory_bytes == 40 * 2**20 == mm.used_bytes()
    assert isinstance(health["loaded"]["model-a"]["rss_delta_bytes"], int)
    with pytest.raises(ModelBudgetExceeded):
        ModelManager(budget_bytes=30 * 2**20).register(tmp_path / "measured")
    shutil.rmtree(tmp_path / "measured")


def test_tampered_bundle_is_not_served(two_bundles, tmp_path):
    import shutil

    a, _ = two_bundles
    shutil.copytree(a, tmp_path / "t")
    with open(tmp_path / "t" / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(AgentError, match="cannot serve"):
        ModelManager().register(tmp_path / "t")


def test_input_validation_messages(two_bundles):
    man = verify_bundle(two_bundles[1])
    assert validate(np.zeros((1, 8, 8), np.float32), man).shape == (1, 1, 8, 8), "a single sample gets a batch"
    with pytest.raises(BadInput, match=r"expects \[batch, 1, 8, 8\]"):
        validate(np.zeros((2, 64), np.float32), man)
    with pytest.raises(BadInput, match="batch must be"):
        validate(np.zeros((0, 1, 8, 8), np.float32), man)


def test_server_tier_always_answers_and_thresholds_are_per_label(two_bundles):
    mm = ModelManager()
    mm.register(two_bundles[1])
    x = np.random.default_rng(0).random((5, 1, 8, 8)).astype(np.float32)
    server = Inference(mm, CascadeConfig("server", default_threshold=1.1), PrivacyPolicy())
    assert {r["tier"] for r in server.predict("model-b", x)} == {"server"}
    cfg = CascadeConfig("node", 0.9, {"model-b": {"3": 0.5}})
    assert cfg.threshold("model-b", "3") == 0.5 and cfg.threshold("model-b", "4") == 0.9
    p = probabilities(np.array([[1.0, 2.0, 3.0]]))
    assert probabilities(np.array([[0.2, 0.8]]), already=True).tolist() == [[0.2, 0.8]]
    assert abs(p.sum() - 1) < 1e-9 and p.argmax() == 2
    with pytest.raises(AgentError):
        PrivacyPolicy(escalate="everything")


def test_agent_config_from_toml(tmp_path):
    p = tmp_path / "agent.toml"
    p.write_text('tier = "node"\nport = 9000\n[privacy]\nescalate = "raw"\n[cascade]\ndefault_threshold = 0.8\n'
                 '[cascade.thresholds.digits]\n"3" = 0.95\n[queue]\nqueue_when_full = "refuse"\n')
    cfg = AgentConfig.from_toml(p, port=9100)
    assert (cfg.tier, cfg.port, cfg.escalate, cfg.default_threshold) == ("node", 9100, "raw", 0.8)
    assert cfg.thresholds == {"digits": {"3": 0.95}} and cfg.queue_when_full == "refuse"
    p.write_text('tier = "node"\nwhatever = 1\n')
    with pytest.raises(AgentError, match="unknown agent settings whatever"):
        AgentConfig.from_toml(p)


def test_top1_matches_numpy_softmax():
    from edgewise.agent.serve.cascade import top1

    rows = np.random.default_rng(0).standard_normal((20, 10)) * 5
    classes, scores = top1(rows.tolist())
    p = probabilities(rows)
    assert classes == p.argmax(1).tolist() and np.allclose(scores, p.max(1))


def test_c_runtime_serves_an_int8_bundle_like_the_device(tmp_path):
    """The endpoint tier runs the generated C through ctypes; it agrees with the integer reference."""
    from edgewise.codegen.lower import lower
    from edgewise.codegen.reference import quantize_input, run_reference
    from edgewise.data import load_splits
    from ..harness import mcu_bundle

    bundle = mcu_bundle(tmp_path, "cnn", "digits", 3)
    mm = ModelManager(runtime="c", build_dir=tmp_path / "build")
    name = mm.register(bundle)
    x = load_splits("digits").test.x[:40]
    inf = Inference(mm, CascadeConfig("endpoint"), PrivacyPolicy(send_results=False))
    results = inf.predict(name, x)
    import onnx

    graph = lower(onnx.load(str(bundle / "model.onnx")))
    ref = [int(np.argmax(run_reference(graph, quantize_input(graph, s)))) for s in x]
    assert [r["class"] for r in results] == ref
    assert mm.health()["loaded"][name]["providers"] == ["edgewise-C (int8, ctypes)"]


def test_execution_providers_follow_the_target_with_the_fallback_stated(two_bundles, tmp_path):
    """An edge-node bundle asks for TensorRT/CUDA; on a CPU-only machine health says it fell back."""
    import onnxruntime as ort

    from edgewise.bundle import read_bundle, write_bundle

    a, _ = two_bundles
    man = read_bundle(a)
    from dataclasses import replace

    node_bundle = write_bundle(tmp_path / "node", replace(man, target="edge-node", files={}),
                               {"model.onnx": a / "model.onnx"})
    mm = ModelManager()
    name = mm.register(node_bundle)
    mm.get(name)
    eps = mm.health()["execution_providers"][name]
    assert eps["wanted"][:2] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    # what /health says is where the loaded session runs, not merely what this ONNX Runtime build lists
    assert eps["running_on"] == mm.get(name).session.get_providers()[0]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert eps["running_on"] == "CPUExecutionProvider" and "not available here" in eps["fallback"]
    else:  # a GPU build: TensorRT needs libnvinfer besides, so CUDA may be as far as it gets
        assert eps["running_on"] in ("TensorrtExecutionProvider", "CUDAExecutionProvider"), eps
        assert (eps["fallback"] is None) == (eps["running_on"] == "TensorrtExecutionProvider"), eps


def test_the_device_side_never_imports_torch():
    """DESIGN: a device installs edgewise[agent]; nothing on the agent's path may pull in the training stack."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; sys.modules['sklearn'] = None\n"
            "import edgewise.agent.runner, edgewise.agent.serve.service, edgewise.agent.serve.cmodel, edgewise.agent.serve.mqtt\n"
            "import edgewise.agent.serve.calibrate, edgewise.codegen.compile, edgewise.agent.ota.updater, edgewise.agent.ota.thread\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_inputs_outside_the_trained_range_are_refused(tmp_path, fast_opts):
    from edgewise.data import load_splits
    from edgewise.optimize.pipeline import optimize
    from edgewise.targets import load_target
    from edgewise.zoo import TrainConfig, train

    train("mlp", load_splits("digits"), TrainConfig(epochs=1)).save(tmp_path / "t")
    fast_opts.torch_passes = False
    fast_opts.only = ("baseline-fused",)
    bundle = optimize(tmp_path / "t", "digits", load_target("edge-server"), tmp_path / "o", fast_opts).bundle
    man = verify_bundle(bundle)
    lo, hi = man.preprocessing["input_range"]
    assert lo < 0 <= 1 < hi  # digits are scaled to [0, 1]
    validate(np.full((1, 1, 8, 8), 0.5, np.float32), man)
    with pytest.raises(BadInput, match="outside the model's input range"):
        validate(np.full((1, 1, 8, 8), 16.0, np.float32), man)  # raw 0..16 pixels: the scale was forgotten


def test_a_replacement_that_fails_to_load_leaves_the_old_model_serving(two_bundles, tmp_path):
    from dataclasses import replace as dc_replace

    from edgewise.bundle import read_bundle, write_bundle

    a, _ = two_bundles
    broken = write_bundle(tmp_path / "broken", dc_replace(read_bundle(a), version="9.0.0", files={}),
                          {"model.onnx": b"not onnx"})
    mm = ModelManager()
    mm.register(a)
    before = mm.get("model-a").session
    with pytest.raises(Exception):
        mm.replace(broken)
    assert mm.manifest("model-a").version == "1.0.0" and mm.get("model-a").session is before
