"""Ed25519 signatures over a bundle's canonical manifest bytes (which hold every file's sha256).

Keys are PEM files; a key's id is the first 16 hex digits of the sha256 of its raw public bytes. A device
trusts only the public keys it was provisioned with, plus keys *endorsed* by one of them: an endorsement
is the new public key signed by a trusted key, so a release key can be rotated without re-flashing.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgewise.bundle.manifest import Manifest
from edgewise.bundle.pack import verify_bundle
from edgewise.errors import SignatureError
from edgewise.fsutil import atomic_write

SIGNATURE = "signature"
ALG = "ed25519"


def canonical(obj: Any) -> bytes:
    """Sorted keys, no whitespace: the bytes a signature over JSON metadata covers."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keys(out: Path, name: str = "release") -> tuple[Path, Path]:
    """Write `<name>.key` (private, mode 0600) and `<name>.pub` into `out`; refuse to overwrite."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    if priv_path.exists() or pub_path.exists():
        raise SignatureError(f"{priv_path} or {pub_path} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    # Each file appears whole or not at all (a full disk leaves no empty key that would block the next try);
    # the public key last, so a pair is complete once it exists.
    try:
        atomic_write(priv_path, pem, mode=0o600)
        atomic_write(pub_path, pub)
    except OSError as e:
        priv_path.unlink(missing_ok=True)
        raise SignatureError(f"cannot write the key pair to {out}: {e.strerror or e}") from e
    return priv_path, pub_path


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise SignatureError(f"cannot read private key {path}: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return key


def load_public(data: bytes | Path) -> Ed25519PublicKey:
    try:
        raw = Path(data).read_bytes() if isinstance(data, Path) else data
        key = serialization.load_pem_public_key(raw)
    except (OSError, ValueError, TypeError) as e:
        raise SignatureError(f"cannot read public key {data if isinstance(data, Path) else '(bytes)'}: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("not an Ed25519 public key")
    return key


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def sign_bytes(key: Ed25519PrivateKey, data: bytes) -> dict[str, str]:
    return {"alg": ALG, "key_id": key_id(key.public_key()), "sig": base64.b64encode(key.sign(data)).decode()}


def endorse(old: Ed25519PrivateKey, new_public: Ed25519PublicKey) -> dict[str, Any]:
    """A rotation certificate: the new public key, signed by a key devices already trust."""
    pem = public_pem(new_public)
    return {"public_key": pem.decode(), "key_id": key_id(new_public), "endorsed_by": sign_bytes(old, pem)}


@dataclass
class TrustStore:
    """The public keys a device accepts, by key id. Endorsed keys join only via a key already trusted."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)

    @classmethod
    def load(cls, paths: list[Path]) -> TrustStore:
        """From .pub files and directories of them (and *.endorsement.json rotation certificates)."""
        store, endorsements = cls(), []
        for p in paths:
            p = Path(p)
            files = sorted(p.iterdir()) if p.is_dir() else [p]
            for f in files:
                if f.name.endswith(".endorsement.json"):
                    endorsements.append(json.loads(f.read_text()))
                elif f.suffix == ".pub":
                    store.add(load_public(f))
        pending = endorsements  # one may rely on another: apply until nothing changes
        while pending:
            left = [e for e in pending if not store.try_endorsed(e)]
            if len(left) == len(pending):
                break
            pending = left
        if not store.keys:
            raise SignatureError(f"no trusted public keys in {', '.join(str(p) for p in paths)}")
        return store

    def add(self, key: Ed25519PublicKey) -> str:
        self.keys[key_id(key)] = key
        return key_id(key)

    def try_endorsed(self, cert: dict[str, Any]) -> bool:
        """Trust the certificate's key if a trusted key signed it; False (untouched) otherwise."""
        try:
            pem = cert["public_key"].encode()
            self.verify(pem, cert["endorsed_by"])
        except (KeyError, AttributeError, SignatureError):
            return False
        self.add(load_public(pem))
        return True

    def verify(self, data: bytes, sig: dict[str, Any]) -> str:
        """The signing key's id when `sig` is a valid signature of `data` by a trusted key."""
        if not isinstance(sig, dict) or sig.get("alg") != ALG:
            raise SignatureError(f"unsupported or missing signature algorithm (want {ALG})")
        kid = sig.get("key_id")
        if kid not in self.keys:
            raise SignatureError(f"signed by unknown key {kid!r}; this device trusts {', '.join(self.keys)}")
        try:
            self.keys[kid].verify(base64.b64decode(sig["sig"], validate=True), data)
        except (InvalidSignature, KeyError, ValueError, TypeError) as e:
            raise SignatureError(f"signature by key {kid} does not verify (tampered or corrupt)") from e
        return str(kid)


def sign_bundle(bundle: Path, key: Ed25519PrivateKey) -> dict[str, str]:
    """Verify the bundle's hashes, then write `signature` over its canonical manifest bytes."""
    manifest = verify_bundle(bundle)
    sig = sign_bytes(key, manifest.canonical_bytes())
    atomic_write(Path(bundle) / SIGNATURE, json.dumps(sig, indent=2).encode())
    return sig


def verify_signed_bundle(bundle: Path, trust: TrustStore) -> tuple[Manifest, str]:
    """Every file's hash, then the signature over the manifest: (manifest, signing key id) or SignatureError."""
    manifest = verify_bundle(bundle)
    return manifest, check_signature(bundle, manifest, trust)


def check_signature(bundle: Path, manifest: Manifest, trust: TrustStore) -> str:
    """The signing key's id, for a bundle whose files were already verified against `manifest`."""
    path = Path(bundle) / SIGNATURE
    if not path.is_file():
        raise SignatureError(f"{bundle} is not signed (no {SIGNATURE} file)")
    try:
        sig = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise SignatureError(f"{path} is not a valid signature file: {e}") from e
    return trust.verify(manifest.canonical_bytes(), sig)
