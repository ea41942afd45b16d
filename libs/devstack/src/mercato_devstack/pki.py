"""A throwaway certificate authority for local TLS: a CA and the certificates it signs, as PEM
files (``<name>.crt`` and an unencrypted PKCS#8 ``<name>.key``). For the local stack and the
tests only; nothing here is fit to protect anything outside this machine."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["alt_names", "issue", "presented_serial", "sign", "still_valid"]

# Renewed by `issue` when less than this is left.
_MIN_LEFT = datetime.timedelta(days=7)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def alt_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """Subject alternative names: an IP address entry for each address, a DNS one otherwise."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _write(
    folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = folder / f"{name}.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)


def still_valid(folder: Path, names: Iterable[str]) -> bool:
    """Whether ``ca`` and every one of ``names`` exist in ``folder`` for at least a week more."""
    horizon = datetime.datetime.now(datetime.UTC) + _MIN_LEFT
    for name in ("ca", *names):
        cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
        if not (cert_path.is_file() and key_path.is_file()):
            return False
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if cert.not_valid_after_utc < horizon:
            return False
    return True


def issue(
    folder: Path,
    leaves: dict[str, Iterable[str]],
    *,
    days: int = 365,
    common_name: str = "mercato local CA",
) -> None:
    """A new CA in ``folder`` (ca.crt, ca.key) and, for each ``name -> hosts`` of ``leaves``, a
    certificate it signs for both server and client use, naming ``hosts`` (IP addresses or DNS
    names) as subject alternative names."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(folder, "ca", ca, ca_key)
    for name, hosts in leaves.items():
        sign(folder, name, hosts, days=days)


def sign(folder: Path, name: str, hosts: Iterable[str], *, days: int = 365) -> None:
    """A new ``name`` certificate and key in ``folder``, signed by the CA there (``ca.crt``,
    ``ca.key``), for server and client use, naming ``hosts`` (IP addresses or DNS names)."""
    ca = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{folder / 'ca.key'} is not the EC key this module makes")
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    names = alt_names(hosts)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    _write(folder, name, builder.sign(ca_key, hashes.SHA256()), key)


def presented_serial(
    port: int,
    ca_file: Path,
    *,
    host: str = "127.0.0.1",
    server_name: str = "localhost",
    alpn: Iterable[str] = (),
) -> int | None:
    """The serial number of the certificate a TLS server on ``host:port`` presents to a new
    connection, verified against ``ca_file`` (None when no such connection can be made)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if alpn:
        context.set_alpn_protocols(list(alpn))
    try:
        with (
            socket.create_connection((host, port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError:
        return None
    return None if der is None else x509.load_der_x509_certificate(der).serial_number
