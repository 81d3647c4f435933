"""Key material of a consortium: the CA, the SuperLink's TLS certificate, site key pairs.

All of it is made with the ``cryptography`` package. The CA and the SuperLink key are
EC P-384; site keys are EC P-384 in the OpenSSH format that ``flwr supernode register``
and ``flower-supernode --auth-supernode-private-key`` read. Private keys are written with
mode 0600 from the moment the file exists (``os.open`` with the mode, then rename), and
no function here returns or prints private key bytes except to write them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .checkpoint import atomic_write

CA_YEARS = 10
SERVER_YEARS = 2
CURVE = ec.SECP384R1


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` atomically with ``mode`` set before any byte lands."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(data), mode)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str, org: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(out_cert: Path, out_key: Path, consortium: str) -> None:
    """Create a self-signed consortium CA (certificate 0644, key 0600)."""
    key = ec.generate_private_key(CURVE())
    name = _name(f"{consortium} consortium CA", consortium)
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA384())
    )
    write_file(out_key, _pem_key(key), 0o600)
    write_file(out_cert, cert.public_bytes(serialization.Encoding.PEM))


def load_ca(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Read the CA certificate and key back; a mismatched pair raises ValueError."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: the CA key must be an EC key")
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise ValueError(f"{key_path} is not the key of {cert_path}")
    return cert, key


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def make_server_cert(
    ca_cert: Path,
    ca_key: Path,
    out_cert: Path,
    out_key: Path,
    sans: Sequence[str],
    consortium: str,
) -> None:
    """Issue the SuperLink's TLS certificate (serverAuth) with ``sans`` from the CA."""
    if not sans:
        raise ValueError("the SuperLink certificate needs at least one SAN")
    issuer_cert, issuer_key = load_ca(ca_cert, ca_key)
    key = ec.generate_private_key(CURVE())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{consortium} SuperLink", consortium))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 * SERVER_YEARS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA384())
    )
    write_file(out_key, _pem_key(key), 0o600)
    write_file(out_cert, cert.public_bytes(serialization.Encoding.PEM))


def make_site_keys(out_private: Path, out_public: Path, comment: str) -> str:
    """Create a site's P-384 authentication key pair; return the public key's SHA-256.

    The private key is in OpenSSH format (what ``flower-supernode`` reads), the public
    key a one-line OpenSSH key (what ``flwr supernode register`` reads).
    """
    key = ec.generate_private_key(CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_file(out_private, private, 0o600)
    write_file(out_public, public + f" {comment}\n".encode())
    return public_key_fingerprint(out_public)


def public_key_fingerprint(public_key: Path) -> str:
    """SHA-256 (hex) of an OpenSSH public key's type and body (the comment ignored)."""
    parts = public_key.read_text(encoding="utf-8").split()
    if len(parts) < 2:
        raise ValueError(f"{public_key} is not an OpenSSH public key")
    return hashlib.sha256(f"{parts[0]} {parts[1]}".encode()).hexdigest()


def verify_chain(ca_cert: Path, cert: Path) -> x509.Certificate:
    """Check that ``cert`` is signed by ``ca_cert`` and currently valid; return it."""
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    leaf.verify_directly_issued_by(ca)
    now = _now()
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise ValueError(f"{cert} is not valid now")
    return leaf
