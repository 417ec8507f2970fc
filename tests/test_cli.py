"""The `edgewise` command end to end, as a user runs it: through its entry point in this process (`ew`),
and in real subprocesses (`ew_process`) where the process itself matters (--help on every verb, the whole
train-optimize-bench path)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from .harness import assert_clean_failure, ew, ew_process


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "cnn"
    proc = ew("train", "--model", "cnn", "--data", "digits", "--out", str(out), "--epochs", "4")
    assert proc.returncode == 0, proc.stderr
    assert "trained cnn on digits" in proc.stdout
    return out


def test_help_on_every_verb():
    for verb in ([], ["train"], ["optimize"], ["bench"], ["import"], ["compile"], ["bundle", "verify"], ["bundle", "inspect"],
                 ["bundle", "sign"], ["bundle", "split"], ["keys", "gen"], ["keys", "endorse"], ["fleet", "serve"],
                 ["fleet", "upload"], ["fleet", "rollout"], ["fleet", "control"], ["device", "enroll"],
                 ["targets", "list"], ["targets", "show"], ["quickstart"]):
        proc = ew(*verb, "--help")
        assert proc.returncode == 0 and "Usage" in proc.stdout, verb
    proc = ew_process("--help")  # the installed entry point, in a process of its own
    assert proc.returncode == 0 and "Usage" in proc.stdout and "quickstart" in proc.stdout


def test_help_text_wraps_to_the_terminal_not_to_the_docstring():
    """Typer keeps a docstring's line breaks; help reads as paragraphs at 80 columns, examples one a line."""
    from edgewise.cli.app import reflow

    doc = """First line.

    A paragraph wrapped
    in the source at
    some width.

    - a list item
    - another one
    Example: edgewise a
    Example: edgewise b
    """
    assert reflow(doc) == ("First line.\n\nA paragraph wrapped in the source at some width.\n\n- a list item\n"
                           "- another one\nExample: edgewise a\nExample: edgewise b")
    from edgewise.cli.model import optimize

    assert "name, samples stacked on a new leading axis" in optimize.__doc__  # the registered verbs are reflowed


def test_search_steps_fold_under_their_own_text_at_80_columns(monkeypatch):
    import io

    from rich.console import Console

    from edgewise.cli import common

    buf = io.StringIO()
    monkeypatch.setattr(common, "console", Console(file=buf, width=80, soft_wrap=True))
    with common._SearchProgress("t") as sp:
        sp.log("baseline-openvino-auto: OpenVINO on CPU, its default precision (bf16 on CPUs with AVX-512 BF16 "
               "or AMX, else f32) [1, 84, A]")
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]  # the bar leaves a blank line when it goes
    assert len(lines) == 2 and all(len(ln) <= 80 for ln in lines), lines
    assert lines[0].startswith("    0s baseline-openvino-auto:") and lines[1].startswith("       CPUs")
    assert lines[1].endswith("[1, 84, A]")  # brackets in a step are text, not markup


@pytest.mark.e2e
def test_train_optimize_bench_end_to_end(trained: Path, tmp_path: Path):
    # Execute
    bundle = tmp_path / "user-x86" / "bundle"
    opt = ew_process("optimize", str(trained), "--target", "edge-node", "--data", "digits", "--out",
                     str(bundle.parent), "--no-torch-passes", "--calibration-samples", "64", "--time-budget", "5")
    verify = ew_process("bundle", "verify", str(bundle))
    bench = ew_process("bench", str(trained), str(bundle), "--data", "digits", "--runs", "30", "-t", "edge-node",
                       "--json", str(tmp_path / "bench.json"), columns=80)
    # Assert
    assert opt.returncode == 0, opt.stderr
    assert "chosen" in opt.stdout and "bundle:" in opt.stdout
    assert verify.returncode == 0 and "verified" in verify.stdout
    assert bench.returncode == 0, bench.stderr
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert len(rows) == 2 and rows[0]["accuracy"] > 0.8
    assert rows[0]["energy_pj_per_mac"] == 1.0  # -t, as `optimize` takes it: edge-node's, not cortex-a's 3.0
    for key in ("latency_1t", "latency_all", "throughput_b1_1t", "throughput_b32_1t", "peak_memory",
                "energy_uj_estimate", "size_bytes"):
        assert key in rows[1], key
    assert rows[1]["latency_1t"]["p50_ms"] <= rows[1]["latency_1t"]["p99_ms"]
    # at 80 columns every row names its model whole, on one line
    assert all(len(line) <= 80 for line in bench.stdout.splitlines() if not line.startswith("wrote ")), bench.stdout
    for name in ("/".join(trained.parts[-2:]), "user-x86/bundle"):  # in the latency and the throughput table
        assert len(re.findall(rf"^ ?{re.escape(name)} ", bench.stdout, re.M)) == 2, (name, bench.stdout)


def test_import_upgrades_a_real_model(rapidocr_cls: Path, tmp_path: Path):
    proc = ew("import", str(rapidocr_cls), "--out", str(tmp_path / "cls.onnx"))
    assert proc.returncode == 0, proc.stderr
    assert "opset 13" in proc.stdout
    assert onnx.load(str(tmp_path / "cls.onnx")).opset_import[0].version == 13


def test_tampered_bundle_fails_verify(trained: Path, tmp_path: Path):
    from edgewise.bundle import Manifest, write_bundle

    b = write_bundle(tmp_path / "b", Manifest("m", "1.0.0", "edge-node", [], [], [], {}, "fp32", [], {}),
                     {"model.onnx": (trained / "model.onnx").read_bytes()})
    with open(b / "model.onnx", "ab") as f:
        f.write(b"\0")
    assert_clean_failure(ew("bundle", "verify", str(b)), "does not match")


def test_keys_sign_and_verify_from_the_command_line(trained: Path, tmp_path: Path):
    # Prepare: a bundle and two key pairs
    from edgewise.bundle import Manifest, write_bundle

    b = write_bundle(tmp_path / "b", Manifest("m", "1.0.0", "edge-node", [{"name": "x", "dtype": "float32",
                                                                            "shape": ["batch", 1, 8, 8]}], [], [],
                                              {"input_range": [0.0, 1.0]}, "fp32", [], {}),
                     {"model.onnx": (trained / "model.onnx").read_bytes()})
    # Execute
    gen = ew("keys", "gen", "--out", str(tmp_path / "k"))
    ew("keys", "gen", "--out", str(tmp_path / "k"), "--name", "other")
    sign = ew("bundle", "sign", str(b), "--key", str(tmp_path / "k" / "release.key"))
    ok = ew("bundle", "verify", str(b), "--key", str(tmp_path / "k" / "release.pub"))
    # Assert: signed with golden pairs; the wrong key and an overwrite are clean failures
    assert gen.returncode == 0 and sign.returncode == 0 and ok.returncode == 0, (gen.stderr, sign.stderr, ok.stderr)
    assert "signed by key" in ok.stdout and (b / "selftest.npz").is_file()
    assert_clean_failure(ew("bundle", "verify", str(b), "--key", str(tmp_path / "k" / "other.pub")), "unknown key")
    assert_clean_failure(ew("keys", "gen", "--out", str(tmp_path / "k")), "refusing to overwrite")
    assert oct((tmp_path / "k" / "release.key").stat().st_mode & 0o777) == "0o600"


def _opset6(path: Path) -> None:
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 6)]), str(path))


def test_bad_input_gives_one_line_and_no_output(trained: Path, tmp_path: Path):
    out = tmp_path / "never"
    (tmp_path / "junk.onnx").write_bytes(np.random.default_rng(0).bytes(2048))
    (tmp_path / "notes.onnx").write_text("not a model")
    _opset6(tmp_path / "old.onnx")  # opsets 7-10 are lifted on load; older ones cannot be
    np.savez(tmp_path / "wrong.npz", x=np.zeros((20, 3, 5), np.float32), y=np.zeros(20))
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 64), np.float32))
    base = ["--target", "edge-node", "--out", str(out), "--no-torch-passes"]
    cases = [
        (["optimize", str(tmp_path / "missing.onnx"), "--data", "digits", *base], "not found"),
        (["optimize", str(tmp_path / "junk.onnx"), "--data", "digits", *base], "ONNX"),
        (["optimize", str(tmp_path / "notes.onnx"), "--data", "digits", *base], "ONNX"),
        (["optimize", str(tmp_path / "old.onnx"), "--data", "digits", *base], "opset 6 is not supported"),
        (["optimize", str(trained), "--data", str(tmp_path / "wrong.npz"), *base], "expects"),
        (["optimize", str(trained), "--data", str(tmp_path / "empty.npz"), *base], "empty"),
        (["optimize", str(trained), "--data", "digits", "--target", "toaster", "--out", str(out)], "unknown target"),
        (["bench", str(tmp_path / "junk.onnx"), "--data", "digits"], "ONNX"),
        (["train", "--model", "transformer-xl", "--data", "digits", "--out", str(out)], "unknown model"),
    ]
    for args, fragment in cases:
        assert_clean_failure(ew(*args), fragment)
        assert not out.exists(), f"{args} left output behind"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")], "temp dirs cleaned up"


def test_a_budget_nothing_meets_fails_with_the_reason(trained: Path, tmp_path: Path):
    tiny = tmp_path / "tiny.toml"
    tiny.write_text('name = "tiny"\nram_bytes = 64\nflash_bytes = 1000000\nlatency_budget_ms = 100\n'
                    'precisions = ["int8"]\nobjective = "size"\ntier = "endpoint"\nmacs_per_second = 6e7\n')
    proc = ew("optimize", str(trained), "--target", str(tiny), "--data", "digits", "--out", str(tmp_path / "o"),
              "--no-torch-passes", "--calibration-samples", "32")
    assert_clean_failure(proc, "nothing fits tiny")
    assert "RAM, target has" in proc.stderr
    assert not (tmp_path / "o" / "bundle").exists()


def test_compile_an_optimized_bundle_to_c_and_run_it(trained: Path, tmp_path: Path):
    # Prepare: an int8 bundle for the MCU target
    opt = ew("optimize", str(trained), "--target", "mcu-256k", "--data", "digits", "--out", str(tmp_path / "o"),
             "--no-torch-passes", "--recipe", "baseline-int8-*", "--calibration-samples", "64")
    assert opt.returncode == 0, opt.stderr
    # Execute
    proc = ew("compile", str(tmp_path / "o" / "bundle"), "--out", str(tmp_path / "c"))
    # Assert
    assert proc.returncode == 0, proc.stderr
    assert "arena" in proc.stdout and (tmp_path / "c" / "model.c").is_file()
    assert ew("bundle", "verify", str(tmp_path / "o" / "bundle")).returncode == 0
    exe = tmp_path / "c" / "model"
    build = subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-o", str(exe),
                            *(str(tmp_path / "c" / f) for f in ("model.c", "ew_kernels.c", "main.c"))],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], input=bytes(64), capture_output=True)
    assert run.returncode == 0 and len(run.stdout.decode().split("|")[0].split()) == 10


def test_compile_refuses_a_float_bundle_with_the_pass_to_run(trained: Path, tmp_path: Path):
    opt = ew("optimize", str(trained), "--target", "edge-server", "--data", "digits", "--out", str(tmp_path / "o"),
             "--no-torch-passes", "--recipe", "baseline-fused", "--calibration-samples", "32")
    assert opt.returncode == 0, opt.stderr
    assert_clean_failure(ew("compile", str(tmp_path / "o" / "bundle"), "--out", str(tmp_path / "c")),
                         "optimize")
    assert not (tmp_path / "c").exists()
    assert_clean_failure(ew("compile", str(tmp_path / "nope"), "--out", str(tmp_path / "c")), "not a bundle")


def test_careless_use_gets_one_line_not_an_internal_error(trained: Path, tmp_path: Path):
    import json

    (tmp_path / "a-file").write_text("x")
    assert_clean_failure(ew("agent", "--data-dir", str(tmp_path / "a-file"), "--port", "0"), "cannot use")
    bad = tmp_path / "bad-bundle"
    bad.mkdir()
    (bad / "manifest.json").write_text(json.dumps({"format_version": 1, "name": "m", "version": "1.0.0",
                                                   "target": "t", "inputs": 5, "outputs": [], "labels": [],
                                                   "preprocessing": {}, "precision": "fp32", "recipe": [],
                                                   "metrics": {}}))
    assert_clean_failure(ew("bundle", "inspect", str(bad)), "'inputs' must be list")
    # a signed bundle checked without a key says so, instead of a bare "ok"
    ew("optimize", str(trained), "--data", "digits", "--target", "cortex-a", "--out", str(tmp_path / "o"),
       "--no-torch-passes", "--recipe", "baseline-fused")
    assert ew("keys", "gen", "--out", str(tmp_path / "k")).returncode == 0
    assert_clean_failure(ew("keys", "gen", "--out", str(tmp_path / "k")), "refusing to overwrite")
    assert ew("bundle", "sign", str(tmp_path / "o" / "bundle"), "--key", str(tmp_path / "k" / "release.key"),
              "--golden", "0").returncode == 0
    proc = ew("bundle", "verify", str(tmp_path / "o" / "bundle"))
    assert proc.returncode == 0 and "signature NOT checked" in proc.stdout
    # compiling would void the signature: refused, with what to do instead
    assert_clean_failure(ew("compile", str(tmp_path / "o" / "bundle"), "--out", str(tmp_path / "c")), "is signed")
    # an output that would overwrite the input is refused before any work
    assert_clean_failure(ew("compile", str(tmp_path / "o" / "bundle"), "--out", str(tmp_path / "o"),
                            "--no-update-bundle"), "would overwrite the input")


@pytest.mark.e2e  # several seconds: in `make test`, out of `make test-fast`
def test_window_and_stride_cut_a_sensor_log_and_refuse_anything_else(tmp_path):
    from tests.harness import sensor_log_csv

    log = sensor_log_csv(tmp_path / "log.csv", seconds_per_segment=8)
    proc = ew("train", "--model", "cnn1d", "--data", str(log), "--window", "1000", "--stride", "250",
              "--epochs", "1", "--out", str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "m" / "train.json").read_text())
    assert meta["sample_shape"] == [3, 50] and meta["labels"] == ["idle", "shake", "walk"]
    assert meta["preprocessing"]["window_ms"] == 1000 and meta["preprocessing"]["stride_ms"] == 250
    proc = ew("train", "--model", "cnn", "--data", "digits", "--window", "1000", "--out", str(tmp_path / "d"))
    assert proc.returncode == 1 and "sensor-log CSV" in proc.stderr and not (tmp_path / "d").exists()
