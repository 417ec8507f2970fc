"""The generated C on a real microcontroller toolchain and an emulated Cortex-M4 (qemu mps2-an386).

CI installs the toolchain (.ci/run); on a machine without it these tests skip, except under CI=true,
where a missing tool is a failure rather than a silent skip.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from edgewise.codegen.compile import compile_model
from edgewise.codegen.emit import render_inputs, render_pcm_inputs
from edgewise.codegen.reference import quantize_input, run_reference
from edgewise.codegen.toolchain import arm_sizes, build_arm, count_instructions, run_qemu
from edgewise.data import load_splits

from ..harness import (assert_clean_failure, build_host, ew, have, run_program, tone_clips, tone_recording,
                       wav_bytes)

TOOLS = ("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm")
missing = [t for t in TOOLS if not have(t)]
if missing and not os.environ.get("CI"):
    pytest.skip(f"not installed: {', '.join(missing)} (see .ci/run)", allow_module_level=True)


@pytest.mark.e2e  # firmware under QEMU, as its keyword twin below: in `make test`, out of `make test-fast`
@pytest.mark.parametrize("fixture, data", [("digits_bundle", "digits"), ("motion_bundle", "basicmotions")])
def test_cortex_m4_build_runs_under_qemu_and_matches_the_host(request, tmp_path, fixture, data):
    # Prepare
    compiled = compile_model(onnx.load(str(request.getfixturevalue(fixture) / "model.onnx")))
    x = load_splits(data).test.x[:6]
    q = np.stack([quantize_input(compiled.graph, s) for s in x])
    for name, text in compiled.sources.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "inputs.h").write_text(render_inputs(q))
    # Execute
    elf = build_arm(tmp_path, tmp_path / "model.elf")
    lines = run_qemu(elf).strip().splitlines()
    sizes = arm_sizes(tmp_path, tmp_path)
    # Assert: the emulated MCU computes exactly what the host build and the reference compute
    on_mcu = np.array([[int(v) for v in line.split("|")[0].split()] for line in lines])
    on_host = run_program(build_host(compiled.sources, tmp_path / "host"), q)
    assert np.array_equal(on_mcu, on_host)
    assert np.array_equal(on_mcu, np.stack([run_reference(compiled.graph, s) for s in q]))
    assert sizes["bss"] >= compiled.plan.arena_bytes, "the arena is static RAM"
    assert sizes["text"] + sizes["data"] >= compiled.graph.flash_bytes(), "weights live in flash"
    assert sizes["bss"] <= 64 * 1024 and sizes["text"] + sizes["data"] <= 1024 * 1024
    # the DSP extension's dual multiply-accumulate is what the kernels run on (and stayed bit-exact above)
    import subprocess

    dis = subprocess.run(["arm-none-eabi-objdump", "-d", str(tmp_path / "model.elf")], capture_output=True,
                         text=True).stdout
    assert "smlad" in dis
    # instructions counted by the emulator: every sample costs the same, a few per MAC
    counts = count_instructions(tmp_path, tmp_path)
    per_mac = [m / compiled.graph.macs for _, m in counts]
    assert len(counts) == len(q) and max(per_mac) - min(per_mac) < 0.05 and 1.0 < per_mac[0] < 12, per_mac


@pytest.mark.e2e  # firmware under QEMU
def test_a_keyword_model_with_its_front_end_runs_pcm_under_qemu_like_the_host(tmp_path, tone_bundle):
    from edgewise.bundle import read_bundle
    from edgewise.codegen.compile import compile_bundle
    from edgewise.targets import load_target

    # Prepare: the int8 model and its generated front end, and PCM clips compiled into the program
    bundle = tone_bundle
    compiled = compile_bundle(bundle, tmp_path / "c", load_target("mcu-256k"))
    pcm, truth = tone_clips(read_bundle(bundle).labels, per_class=2)
    src = tmp_path / "arm"
    src.mkdir()
    for name, text in compiled.sources.items():
        (src / name).write_text(text)
    (src / "inputs.h").write_text(render_pcm_inputs(pcm))
    # Execute
    lines = run_qemu(build_arm(src, tmp_path / "kws.elf")).strip().splitlines()
    host = build_host(compiled.sources, tmp_path / "host")
    import subprocess

    on_host = subprocess.run([str(host)], input=pcm.tobytes(), capture_output=True, check=True, timeout=60)
    # Assert: PCM in, the same outputs on the emulated Cortex-M4 as on the host, and the right classes
    assert lines == on_host.stdout.decode().strip().splitlines()
    assert [int(line.split("|")[1]) for line in lines] == truth
    f = compiled.figures()
    assert f["arena_bytes"] + f["frontend_ram_bytes"] + f["stream_ram_bytes"] <= 64 * 1024
    # The streaming build reads a WAV file named on its command line, over semihosting, and prints the words
    # it hears: the same lines as the host build
    pcm, _ = tone_recording(["high", "low", "mid"])
    (tmp_path / "talk.wav").write_bytes(wav_bytes(pcm.astype(np.float32) / 32767, 16000))
    elf = build_arm(src, tmp_path / "kws-stream.elf", embedded_inputs=False)
    heard = run_qemu(elf, args=[str(tmp_path / "talk.wav")]).strip().splitlines()
    on_host = subprocess.run([str(host), str(tmp_path / "talk.wav")], capture_output=True, text=True, timeout=60)
    assert heard == on_host.stdout.strip().splitlines() and {"high", "low", "mid"} <= {h.split()[0] for h in heard}
    # ... and the command does all of it: compile, build the firmware, run it on the recording
    proc = ew("compile", str(bundle), "--out", str(tmp_path / "fw"), "--board", "mps2-an386", "--run",
              str(tmp_path / "talk.wav"), "--no-update-bundle")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "fw" / "firmware.elf").is_file() and "\n".join(heard) in proc.stdout
    assert_clean_failure(ew("compile", str(bundle), "--out", str(tmp_path / "fw2"), "--board", "esp32"),
                         "unknown board")
    assert not (tmp_path / "fw2").exists()
