"""SuperNode authentication: which devices may join a federation.

TLS (`tls.py`) proves the SuperLink to the devices; this proves each device to the SuperLink. A device
holds an EC P-384 private key (`edgewise federate node-key`, OpenSSH format, as Flower reads it) and signs
its requests with it; the SuperLink runs with `--enable-supernode-auth` and accepts only nodes whose public
key was registered (`flwr supernode register`). A node with no key, or an unregistered one, never takes part
in a round, so it can send neither weights nor NaNs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgewise.errors import FederatedError
from edgewise.fsutil import atomic_write


@dataclass(frozen=True)
class NodeKey:
    private: Path
    public: Path


def make_node_key(directory: Path, name: str = "node") -> NodeKey:
    """A new key pair in `directory`: NAME.key (mode 0600, stays on the device) and NAME.pub (goes to
    whoever runs `federate serve`). Never replaces an existing key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = NodeKey(directory / f"{name}.key", directory / f"{name}.pub")
    for p in (key.private, key.public):
        if p.exists():
            raise FederatedError(f"{p} exists: a node keeps its key (remove it first to make a new one)")
    private = ec.generate_private_key(ec.SECP384R1())
    atomic_write(key.private, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                    serialization.NoEncryption()), mode=0o600)
    atomic_write(key.public, private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                               serialization.PublicFormat.OpenSSH) + b"\n")
    return key


def check_private_key(path: Path) -> Path:
    """The path of a readable EC private key in OpenSSH format, or a readable error."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    try:
        key = load_ssh_private_key(Path(path).read_bytes(), None)
    except OSError as e:
        raise FederatedError(f"cannot read the node key {path}: {e.strerror}") from e
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise FederatedError(f"{path} is not an unencrypted OpenSSH private key (make one with "
                            "`edgewise federate node-key`)") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FederatedError(f"{path} is not an EC key: Flower authenticates nodes with NIST EC keys (P-384)")
    if os.name == "posix" and Path(path).stat().st_mode & 0o077:
        raise FederatedError(f"{path} is readable by other users: chmod 600 {path}")
    return Path(path).resolve()


def public_keys(paths: list[Path]) -> list[Path]:
    """The node public keys named (files, or directories of *.pub), each checked, in a stable order."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_ssh_public_key

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.pub"))
            if not found:
                raise FederatedError(f"{p} holds no *.pub node keys")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FederatedError(f"no node key at {p}")
    seen: dict[bytes, Path] = {}
    for f in files:
        try:
            key = load_ssh_public_key(f.read_bytes().strip())
        except (ValueError, UnsupportedAlgorithm) as e:
            raise FederatedError(f"{f} is not an OpenSSH public key (NAME.pub from `edgewise federate node-key`)") from e
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise FederatedError(f"{f} is not an EC public key: Flower authenticates nodes with NIST EC keys")
        raw = key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
        if raw in seen:
            raise FederatedError(f"{f} is the same key as {seen[raw]}")
        seen[raw] = f
    return [f.resolve() for f in files]
