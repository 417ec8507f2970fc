"""Budgets and time: the profile's latency only ranks, the user's budgets reject, the time budget cuts the
search short without losing the report, and the output directory is checked before any work."""

from __future__ import annotations

import json

import pytest

from edgewise.errors import EdgewiseError
from edgewise.optimize.pipeline import optimize
from edgewise.optimize.search import search
from edgewise.source import fit_data, load_source
from edgewise.targets import load_target


@pytest.fixture
def impatient_target(tmp_path):
    """cortex-a, but asking for a latency no model here reaches."""
    t = tmp_path / "impatient.toml"
    t.write_text('name = "impatient"\nram_bytes = 1073741824\nflash_bytes = 8589934592\nlatency_budget_ms = 0.0001\n'
                 'precisions = ["fp32", "int8"]\nobjective = "latency"\ntier = "node"\n')
    return load_target(str(t))


def test_a_profiles_latency_figure_ranks_but_never_rejects_everything(trained_cnn_dir, digits, fast_opts,
                                                                     impatient_target):
    fast_opts.torch_passes = False
    src, splits = fit_data(load_source(trained_cnn_dir), digits)
    r = search(src, splits, impatient_target, fast_opts)
    assert r.chosen is not None
    assert any("latency preference" in n for n in r.notes)
    assert not any("latency" in v for c in r.candidates for v in c.violations)


def test_a_latency_budget_the_user_sets_is_hard_and_the_report_says_what_each_lacks(
        trained_cnn_dir, fast_opts, impatient_target, tmp_path):
    fast_opts.torch_passes = False
    fast_opts.max_latency_ms = 0.0001
    out = tmp_path / "o"
    outcome = optimize(trained_cnn_dir, "digits", impatient_target, out, fast_opts)
    assert outcome.bundle is None and "--max-latency-ms" in outcome.result.why
    report = json.loads((out / "report.json").read_text())
    assert report["closest"] and all("--max-latency-ms" in v for c in report["closest"] for v in c["lacks"])
    assert (out / "report.html").is_file()


def test_a_time_budget_lists_what_it_did_not_try_and_still_bundles(trained_cnn_dir, fast_opts, tmp_path):
    fast_opts.torch_passes = False
    fast_opts.time_budget_s = 0.03  # the whole search takes ~0.4 s on digits
    outcome = optimize(trained_cnn_dir, "digits", load_target("cortex-a"), tmp_path / "o", fast_opts)
    r = outcome.result
    assert r.not_tried and outcome.bundle is not None
    assert outcome.report["not_tried"] == r.not_tried
    assert not {c.id for c in r.candidates} & set(r.not_tried)


def test_out_is_checked_before_any_work(trained_cnn_dir, fast_opts, tmp_path):
    mine = tmp_path / "my-photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"\xff\xd8 precious")
    with pytest.raises(EdgewiseError, match="edgewise did not write"):
        optimize(trained_cnn_dir, "digits", load_target("cortex-a"), mine, fast_opts)
    assert (mine / "holiday.jpg").read_bytes() == b"\xff\xd8 precious"
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(EdgewiseError, match="not a directory"):
        optimize(trained_cnn_dir, "digits", load_target("cortex-a"), tmp_path / "a-file", fast_opts)
    # what edgewise wrote itself may be replaced by the next run
    fast_opts.torch_passes, fast_opts.only = False, ("baseline-fused",)
    for _ in range(2):
        assert optimize(trained_cnn_dir, "digits", load_target("cortex-a"), tmp_path / "o", fast_opts).bundle


def test_graphs_with_loop_and_if_keep_their_outer_scope_weights(tmp_path, fast_opts):
    """The Loop body reads an outer-scope weight: folding, fusion and compaction must keep it; what ORT's
    quantizer cannot do with such a graph rejects only quantized candidates, each with its reason."""
    from edgewise.zoo import corpus

    model, data = corpus.build("loop-if", tmp_path / "m")
    outcome = optimize(model, data, load_target("cortex-a"), tmp_path / "o", fast_opts)
    cands = {c.id: c for c in outcome.result.candidates}
    assert cands["baseline-fused"].status == "ok" and outcome.bundle is not None
    rejected = [c for c in cands.values() if c.status != "ok"]
    assert all(c.precision != "fp32" and c.reason for c in rejected)


def test_a_drop_of_exactly_the_tolerance_is_within_it_everywhere_the_search_asks():
    """(0.99 - 0.98) * 100 is 1.0000000000000009 in floats: the choice, the int8 bookkeeping and the trigger for
    NNCF's accuracy control all ask the same question, so a candidate the choice accepts does not also count
    as having missed."""
    from edgewise.optimize.search import SearchOptions

    opts = SearchOptions(max_accuracy_drop=1.0)
    assert (0.99 - 0.98) * 100 > 1.0 and opts.within_tolerance((0.99 - 0.98) * 100)
    assert not opts.within_tolerance(1.001) and opts.within_tolerance(-3.0)
