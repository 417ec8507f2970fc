import io
import json
import tarfile

import pytest

from edgewise.bundle import verify_bundle
from edgewise.bundle.archive import pack, unpack
from edgewise.bundle.selftest import add_golden, check_golden
from edgewise.bundle.signing import (
    TrustStore,
    endorse,
    generate_keys,
    load_private,
    load_public,
    sign_bundle,
    verify_signed_bundle,
)
from edgewise.errors import BundleError, SignatureError

from ..harness import make_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("sig"), "mlp", 1, "digits", 0.5)


@pytest.fixture
def keys(tmp_path):
    generate_keys(tmp_path / "k", "release")
    generate_keys(tmp_path / "k", "other")
    return tmp_path / "k"


def _copy(bundle, dest):
    import shutil

    shutil.copytree(bundle, dest)
    return dest


def test_sign_then_verify_and_every_kind_of_tampering_is_refused(bundle, keys, tmp_path):
    # Prepare
    b = _copy(bundle, tmp_path / "b")
    trust = TrustStore.load([keys / "release.pub"])
    # Execute
    add_golden(b)
    sign_bundle(b, load_private(keys / "release.key"))
    manifest, kid = verify_signed_bundle(b, trust)
    # Assert: valid; then a changed manifest field, a changed file, an unknown key, a mangled signature
    assert manifest.name == "digits" and kid in trust.keys
    m = json.loads((b / "manifest.json").read_text())
    m["version"] = "9.9.9"
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_signed_bundle(b, trust)
    b2 = _copy(bundle, tmp_path / "b2")
    sign_bundle(b2, load_private(keys / "other.key"))
    with pytest.raises(SignatureError, match="unknown key"):
        verify_signed_bundle(b2, trust)
    sig = json.loads((b2 / "signature").read_text())
    sig["sig"] = "not base64!"
    (b2 / "signature").write_text(json.dumps(sig))
    with pytest.raises(SignatureError):
        verify_signed_bundle(b2, TrustStore.load([keys / "other.pub"]))
    with pytest.raises(SignatureError, match="not signed"):
        verify_signed_bundle(_copy(bundle, tmp_path / "b3"), trust)


def test_key_rotation_through_an_endorsement(bundle, keys, tmp_path):
    # Prepare: devices trust only release.pub; the new key is endorsed by it
    trust_dir = tmp_path / "trust"
    trust_dir.mkdir()
    (trust_dir / "release.pub").write_bytes((keys / "release.pub").read_bytes())
    b = _copy(bundle, tmp_path / "b")
    sign_bundle(b, load_private(keys / "other.key"))
    with pytest.raises(SignatureError, match="unknown key"):
        verify_signed_bundle(b, TrustStore.load([trust_dir]))
    # Execute
    cert = endorse(load_private(keys / "release.key"), load_public(keys / "other.pub"))
    (trust_dir / "other.endorsement.json").write_text(json.dumps(cert))
    # Assert: accepted now; an endorsement signed by an untrusted key adds nothing
    verify_signed_bundle(b, TrustStore.load([trust_dir]))
    generate_keys(tmp_path / "evil", "evil")
    forged = endorse(load_private(tmp_path / "evil" / "evil.key"), load_public(tmp_path / "evil" / "evil.pub"))
    (trust_dir / "evil.endorsement.json").write_text(json.dumps(forged))
    assert forged["key_id"] not in TrustStore.load([trust_dir]).keys


def test_archive_round_trip_and_hostile_archives(bundle, tmp_path):
    # Round trip
    (tmp_path / "a.tar.gz").write_bytes(pack(bundle))
    assert verify_bundle(unpack(tmp_path / "a.tar.gz", tmp_path / "out")).name == "digits"
    # Hostile entries: traversal, absolute path, symlink
    for name, kind in (("../escape.txt", tarfile.REGTYPE), ("/etc/evil", tarfile.REGTYPE), ("link", tarfile.SYMTYPE)):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = 3
                tar.addfile(info, io.BytesIO(b"bad"))
        (tmp_path / "h.tar.gz").write_bytes(buf.getvalue())
        with pytest.raises(BundleError, match="escapes|link"):
            unpack(tmp_path / "h.tar.gz", tmp_path / f"h-{kind!r}")
        assert not (tmp_path / "escape.txt").exists()
    (tmp_path / "trunc.tar.gz").write_bytes(pack(bundle)[:500])
    with pytest.raises(BundleError, match="not a readable"):
        unpack(tmp_path / "trunc.tar.gz", tmp_path / "t")


def test_golden_pairs_catch_a_model_that_computes_something_else(bundle, tmp_path):
    b = add_golden(_copy(bundle, tmp_path / "b"))
    import numpy as np
    import onnxruntime as ort

    s = ort.InferenceSession(str(b / "model.onnx"), providers=["CPUExecutionProvider"])
    assert check_golden(b, lambda x: s.run(None, {s.get_inputs()[0].name: x})[0])["pairs"] == 4
    with pytest.raises(BundleError, match="self-test failed"):
        check_golden(b, lambda x: s.run(None, {s.get_inputs()[0].name: x})[0][:, ::-1] * 3)
    with pytest.raises(BundleError, match="shape"):
        check_golden(b, lambda x: np.zeros((1, 1)))
