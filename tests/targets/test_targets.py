import pytest

from edgewise.errors import TargetError
from edgewise.targets import available, load_target


def test_builtin_targets():
    names = {t.name for t in available()}
    assert {"mcu-256k", "cortex-a", "edge-node", "edge-server"} <= names
    mcu = load_target("mcu-256k")
    assert mcu.ram_bytes == 256 * 1024 and mcu.flash_bytes == 1024 * 1024 and mcu.int8_only
    assert not mcu.runs_onnxruntime and load_target("edge-node").runs_onnxruntime
    # profiles that differ in what runs them, not only in size
    assert {"x86-server", "jetson-orin", "intel-igpu"} <= names
    assert load_target("x86-server").runtimes == ("onnxruntime", "openvino")
    assert load_target("intel-igpu").openvino_device == "GPU" and load_target("edge-node").runtimes == ("onnxruntime",)
    assert load_target("jetson-orin").execution_providers[0] == "TensorrtExecutionProvider"


def test_user_toml(tmp_path):
    p = tmp_path / "cam.toml"
    p.write_text('name = "cam"\nram_bytes = 2048\nflash_bytes = 4096\nlatency_budget_ms = 5\n'
                 'precisions = ["int8", "fp32"]\nvendor = "acme"\n')
    t = load_target(str(p))
    assert t.name == "cam" and t.extra == {"vendor": "acme"} and t.objective == "latency"


@pytest.mark.parametrize("text, message", [
    ("name = 'x'", "lacks"),
    ("name='x'\nram_bytes=1\nflash_bytes=1\nlatency_budget_ms=1\nprecisions=['fp32']\nruntimes=['tvm']", "runtimes"),
    ("name='x'\nram_bytes=1\nflash_bytes=1\nlatency_budget_ms=1\nprecisions=['int3']", "precisions"),
    ("name='x'\nram_bytes=1\nflash_bytes=1\nlatency_budget_ms=1\nprecisions=['int8']\nobjective='fun'", "objective"),
    ("name = [", "not valid TOML"),
])
def test_malformed_profiles(tmp_path, text, message):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(TargetError, match=message):
        load_target(str(p))


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(TargetError, match="mcu-256k"):
        load_target("quantum-toaster")
