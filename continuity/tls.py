"""TLS contexts for the listeners: from ``[tls]``, or a self-signed pair made once.

When ``tls.certificate`` and ``tls.key`` are empty, a self-signed certificate
for ``server.hostname`` is generated on first start into ``data_dir/tls/`` and
reused afterwards; that is logged as a warning, because clients will complain.
"""

from __future__ import annotations

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl
from twisted.logger import Logger

from continuity import durable
from continuity.config import TLSConfig

log = Logger()


def generate_self_signed(hostname: str, cert_path: str, key_path: str, days: int = 3650) -> None:
    """Write a self-signed ECDSA P-256 certificate for ``hostname`` and its key, durably."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    durable.make_dirs(os.path.dirname(key_path))
    durable.write_file(key_path, [key_pem], mode=0o600)
    durable.write_file(cert_path, [cert.public_bytes(serialization.Encoding.PEM)], mode=0o644)


def resolve_pair(tls: TLSConfig, data_dir: str, hostname: str) -> tuple[str, str]:
    """The (certificate, key) paths to use, generating the self-signed pair if needed."""
    if tls.certificate:
        return tls.certificate, tls.key
    cert_path = os.path.join(data_dir, "tls", "selfsigned-cert.pem")
    key_path = os.path.join(data_dir, "tls", "selfsigned-key.pem")
    if not (os.path.exists(cert_path) and os.path.exists(key_path)):
        generate_self_signed(hostname, cert_path, key_path)
        log.warn(
            "no [tls] certificate configured: generated a self-signed certificate for {hostname} in {path};"
            " clients will warn until a real certificate is configured",
            hostname=hostname,
            path=cert_path,
        )
    else:
        log.warn("using the self-signed certificate {path}", path=cert_path)
    return cert_path, key_path


def context_factory(cert_path: str, key_path: str) -> ssl.CertificateOptions:
    """Server TLS options (TLS 1.2 or later) from a PEM chain and key."""
    with open(cert_path, "rb") as handle:
        chain = x509.load_pem_x509_certificates(handle.read())
    with open(key_path, "rb") as handle:
        key = serialization.load_pem_private_key(handle.read(), password=None)
    return ssl.CertificateOptions(
        # pyOpenSSL takes cryptography objects directly (its own X509 is deprecated).
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
