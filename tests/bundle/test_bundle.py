import pytest

from edgewise.bundle import Manifest, read_bundle, verify_bundle, write_bundle
from edgewise.errors import BundleError


def _manifest(**kw):
    base = dict(name="m", version="1.0.0", target="mcu-256k", inputs=[], outputs=[], labels=["a"],
                preprocessing={}, precision="int8", recipe=[], metrics={"accuracy": 0.9})
    base.update(kw)
    return Manifest(**base)


def test_write_then_verify_roundtrip(tmp_path):
    # Execute
    out = write_bundle(tmp_path / "b", _manifest(), {"model.onnx": b"onnx-bytes", "extra/notes.txt": b"hi"})
    man = verify_bundle(out)
    # Assert
    assert man.files["model.onnx"]["size"] == 10 and len(man.files["model.onnx"]["sha256"]) == 64
    assert read_bundle(out).canonical_bytes() == man.canonical_bytes()


def test_tampered_missing_and_unlisted_files_are_caught(tmp_path):
    out = write_bundle(tmp_path / "b", _manifest(), {"model.onnx": b"onnx-bytes"})
    (out / "model.onnx").write_bytes(b"onnx-bytez")
    with pytest.raises(BundleError, match="does not match"):
        verify_bundle(out)
    (out / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        verify_bundle(out)
    out = write_bundle(tmp_path / "c", _manifest(), {"model.onnx": b"x"})
    (out / "payload.sh").write_text("rm -rf /")
    with pytest.raises(BundleError, match="does not list"):
        verify_bundle(out)


def test_corrupt_manifest(tmp_path):
    out = write_bundle(tmp_path / "b", _manifest(), {"model.onnx": b"x"})
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        verify_bundle(out)
    with pytest.raises(BundleError, match="not a bundle"):
        read_bundle(tmp_path)


def test_bad_version_and_path_traversal(tmp_path):
    with pytest.raises(BundleError, match="semantic"):
        _manifest(version="latest")
    with pytest.raises(BundleError, match="relative path"):
        write_bundle(tmp_path / "b", _manifest(), {"../escape.onnx": b"x"})


def test_failed_write_leaves_nothing_and_keeps_the_old_bundle(tmp_path):
    old = write_bundle(tmp_path / "b", _manifest(version="1.0.0"), {"model.onnx": b"old"})
    with pytest.raises(BundleError):
        write_bundle(tmp_path / "b", _manifest(version="2.0.0"), {"model.onnx": tmp_path / "missing-file"})
    assert verify_bundle(old).version == "1.0.0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"], "no temp directories left behind"


def test_unwritable_destination(tmp_path):
    # A path under a regular file cannot be created, even by root (CI runs as root).
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BundleError, match="cannot write"):
        write_bundle(blocker / "b", _manifest(), {"model.onnx": b"x"})
