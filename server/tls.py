"""TLS: contexts for aiosmtpd (stdlib ssl) and Twisted (pyOpenSSL), dev certificates.

One certificate/key pair serves every listener. `TlsContexts.reload()` (SIGHUP)
re-reads the files: new handshakes use the new certificate, live sessions keep
theirs. RFC 8314 (implicit TLS), RFC 3207 / 2595 (STARTTLS).
"""
from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

log = logging.getLogger("casella.tls")


def generate_self_signed(cert_file: str, key_file: str, hostname: str, days: int = 825) -> None:
    """Write a self-signed P-256 certificate for `hostname` (and localhost, 127.0.0.1, ::1)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Casella self-signed")])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt_names: list[x509.GeneralName] = [x509.DNSName(hostname)]
    if hostname != "localhost":
        alt_names.append(x509.DNSName("localhost"))
    alt_names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    os.makedirs(os.path.dirname(os.path.abspath(cert_file)), exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(key_file)), exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    with open(cert_file, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))


@implementer(IOpenSSLContextFactory)
class _TwistedContextFactory:
    """An old-style context factory (getContext) that always hands out the current context."""

    def __init__(self, owner: "TlsContexts") -> None:
        self._owner = owner

    def getContext(self) -> SSL.Context:  # noqa: N802 - Twisted's interface name
        return self._owner.openssl_context


class TlsContexts:
    def __init__(self, cert_file: str, key_file: str, min_version: str = "TLSv1.2") -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.min_version = min_version
        self.ssl_context: ssl.SSLContext = self._stdlib()
        self.openssl_context: SSL.Context = self._openssl()
        self.twisted_factory = _TwistedContextFactory(self)

    @classmethod
    def from_settings(cls, tls_settings, hostname: str) -> "TlsContexts | None":  # noqa: ANN001
        present = os.path.exists(tls_settings.cert_file) and os.path.exists(tls_settings.key_file)
        if not present and tls_settings.self_signed_if_missing:
            log.info("generating a self-signed certificate for %s in %s", hostname, tls_settings.cert_file)
            generate_self_signed(tls_settings.cert_file, tls_settings.key_file, hostname)
            present = True
        if not present:
            return None
        return cls(tls_settings.cert_file, tls_settings.key_file, tls_settings.min_version)

    def _stdlib(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = (ssl.TLSVersion.TLSv1_3 if self.min_version == "TLSv1.3"
                                   else ssl.TLSVersion.TLSv1_2)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def _openssl(self) -> SSL.Context:
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(SSL.TLS1_3_VERSION if self.min_version == "TLSv1.3" else SSL.TLS1_2_VERSION)
        context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        context.use_certificate_chain_file(self.cert_file)
        context.use_privatekey_file(self.key_file)
        context.check_privatekey()
        return context

    def reload(self) -> None:
        """Re-read the files; on error keep the old contexts and log why."""
        try:
            self.ssl_context.load_cert_chain(self.cert_file, self.key_file)
            self.openssl_context = self._openssl()
        except (OSError, ssl.SSLError, SSL.Error) as exc:
            log.error("TLS reload failed, keeping the old certificate: %s", exc)
            return
        log.info("TLS certificate reloaded from %s", self.cert_file)
