import numpy as np

from edgewise.agent.serve.calibrate import calibrate, simulate


def _probs(correct: np.ndarray, conf: np.ndarray, y: np.ndarray, k: int = 3) -> np.ndarray:
    p = np.full((len(y), k), 0.0)
    pred = np.where(correct, y, (y + 1) % k)
    p[np.arange(len(y)), pred] = conf
    p[np.arange(len(y)), (pred + 1) % k] = 1 - conf
    return p


def test_calibration_keeps_accuracy_and_answers_most_at_the_bottom():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 1000)
    conf_small = rng.uniform(0.4, 1.0, 1000)
    small = _probs(conf_small > 0.6, conf_small, y)  # confident answers are right, unsure ones wrong
    big = _probs(np.ones(1000, bool), np.full(1000, 0.99), y)
    plan = calibrate([small, big], y, max_drop_points=0.5)
    assert plan.top_accuracy == 1.0 and plan.accuracy >= 0.995
    assert 0.55 <= plan.shares[0] <= 0.7 and abs(sum(plan.shares) - 1) < 1e-9
    tier, pred = simulate([small, big], y, plan.thresholds)
    assert (tier == 0).mean() == plan.shares[0]


def test_three_tiers_and_an_impossible_bottom():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 500)
    useless = _probs(np.zeros(500, bool), np.full(500, 0.9), y)  # confident and always wrong
    mid = _probs(rng.uniform(size=500) < 0.97, np.full(500, 0.95), y)
    top = _probs(np.ones(500, bool), np.full(500, 0.99), y)
    plan = calibrate([useless, mid, top], y, max_drop_points=0.5)
    assert plan.shares[0] == 0.0, "a tier that is confidently wrong answers nothing"
    assert plan.accuracy >= plan.top_accuracy - 0.005


def test_cli_writes_agent_configs(tier_bundles, tmp_path):
    from edgewise.agent.runner import AgentConfig
    from tests.harness import ew

    proc = ew("cascade", "calibrate", "-b", str(tier_bundles["endpoint"]), "-b", str(tier_bundles["node"]),
              "-b", str(tier_bundles["server"]), "--data", "digits", "--out-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "end-to-end accuracy" in proc.stdout
    cfg = AgentConfig.from_toml(tmp_path / "endpoint.toml")
    assert cfg.tier == "endpoint" and 0 < cfg.default_threshold <= 1.01
    assert cfg.escalate == "none", "calibrating thresholds must not switch the privacy default off"
    assert AgentConfig.from_toml(tmp_path / "node.toml").tier == "node"
