"""TLS for the deployment engine: a federation CA and a SuperLink certificate, made once and kept.

`ca.crt` is what devices need (`edgewise federate join --root-cert ca.crt`); `ca.key` and `superlink.key`
stay on the server (mode 0600). The SuperLink's certificate names localhost, 127.0.0.1 and the hosts given,
since SuperNodes and Flower's own runtime processes check the name they connect to.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from edgewise.errors import FederatedError
from edgewise.fsutil import atomic_write


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def _names(hosts: list[str]) -> list[object]:
    from cryptography import x509

    out: list[object] = []
    for h in ["localhost", "127.0.0.1", *hosts]:
        if h in ("", "0.0.0.0", "::"):
            continue
        try:
            name: object = x509.IPAddress(ipaddress.ip_address(h))
        except ValueError:
            name = x509.DNSName(h)
        if name not in out:
            out.append(name)
    return out


def ensure_certs(directory: Path, hosts: list[str], days: int = 825) -> TlsFiles:
    """The CA and SuperLink certificate in `directory`, made if missing (an existing CA is reused, so
    devices that already trust it keep working; the SuperLink certificate is remade when names change)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.crt", directory / "superlink.crt", directory / "superlink.key")
    ca_key_path = directory / "ca.key"
    now = dt.datetime.now(dt.timezone.utc)
    pem = serialization.Encoding.PEM
    private = dict(encoding=pem, format=serialization.PrivateFormat.PKCS8,
                   encryption_algorithm=serialization.NoEncryption())
    if files.ca.exists() != ca_key_path.exists():
        raise FederatedError(f"{directory} holds only half of a CA (ca.crt and ca.key go together)")
    if files.ca.exists():
        try:
            ca_cert = x509.load_pem_x509_certificate(files.ca.read_bytes())
            ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        except ValueError as e:
            raise FederatedError(f"cannot read the federation CA in {directory}: {e}") from e
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgewise federation CA")])
        ca_cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                  critical=True)
                   .sign(ca_key, hashes.SHA256()))
        atomic_write(ca_key_path, ca_key.private_bytes(**private), mode=0o600)
        atomic_write(files.ca, ca_cert.public_bytes(pem))
    names = _names(hosts)
    if files.cert.exists() and files.key.exists():
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if (cert.issuer == ca_cert.subject and set(san) >= set(names)
                and cert.not_valid_after_utc > now + dt.timedelta(days=1)):
            return files
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgewise superlink")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)  # type: ignore[arg-type]
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    atomic_write(files.key, key.private_bytes(**private), mode=0o600)
    atomic_write(files.cert, cert.public_bytes(pem))
    return files
