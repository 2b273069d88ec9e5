"""A private CA and the certificates of one stack, and gRPC credentials made from them.

``up`` makes a CA (an EC P-256 key that never leaves ``<run_dir>/secrets/tls/``) and
issues from it: the Keepers' server certificate, the proxies' server certificate, and a
client certificate for the AppMasters' link (mutual TLS). Every name a client dials is
in its server certificate's subjectAltName (the loopback addresses here), so clients
verify the server against the CA, and never a public one. Keys are written 0600
(``util.secrets``); certificates are public but live beside them.

What crosses process boundaries is a ``TlsFiles`` (paths), never a key.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ha_serving._errors import InvalidSpec
from ha_serving.util.secrets import write_secret

VALID_DAYS = 365
"""Lifetime of the CA and of every certificate: a stack is brought up again long before."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA that verifies the other side, and this side's certificate and
    key (None for a client that presents none)."""

    ca: str
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None
    """The name the server's certificate must be valid for, instead of the address
    dialled: a client that dials a forwarder in front of the server (a drill's fault
    link) still verifies the server behind it. None: the address dialled."""

    def options(self) -> list[tuple[str, str]]:
        """The channel options this verification needs (gRPC's target-name override)."""
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]

    def paths(self) -> tuple[Path, Path]:
        """This side's certificate and key."""
        if self.cert is None or self.key is None:
            raise ValueError("this side has no certificate")
        return Path(self.cert), Path(self.key)

    def _pair(self) -> tuple[bytes, bytes]:
        if self.cert is None or self.key is None:
            raise ValueError("this side has no certificate")
        return Path(self.key).read_bytes(), Path(self.cert).read_bytes()

    def server_credentials(self, *, require_client_cert: bool = False) -> grpc.ServerCredentials:
        """A server's: its certificate; with ``require_client_cert``, a client must show
        one the CA signed (mutual TLS)."""
        return grpc.ssl_server_credentials(
            [self._pair()],
            root_certificates=Path(self.ca).read_bytes() if require_client_cert else None,
            require_client_auth=require_client_cert,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """A client's: the server must show a certificate the CA signed, for the name
        dialled; with a certificate of its own, the client shows it (mutual TLS)."""
        key, cert = self._pair() if self.cert is not None else (None, None)
        return grpc.ssl_channel_credentials(
            root_certificates=Path(self.ca).read_bytes(), private_key=key, certificate_chain=cert
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ha-serving"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_ca(directory: Path, *, name: str = "ha-serving local CA") -> TlsFiles:
    """A new CA in ``directory``: ``ca.pem`` and ``ca.key`` (0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
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
        )
        .sign(key, hashes.SHA256())
    )
    ca = write_secret(directory / "ca.pem", cert.public_bytes(serialization.Encoding.PEM).decode())
    ca_key = write_secret(directory / "ca.key", _key_pem(key))
    return TlsFiles(str(ca), str(ca), str(ca_key))


def issue(
    ca: TlsFiles, directory: Path, name: str, *, hosts: list[str], server: bool, client: bool
) -> TlsFiles:
    """A certificate ``<name>.pem`` (and ``<name>.key``, 0600) signed by ``ca``, valid
    for ``hosts`` (IP addresses or DNS names) as a server and/or as a client."""
    if ca.cert is None or ca.key is None:
        raise ValueError("the CA's certificate and key are needed to issue one")
    ca_cert = x509.load_pem_x509_certificate(Path(ca.cert).read_bytes())
    ca_key = serialization.load_pem_private_key(Path(ca.key).read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the CA key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(_san(hosts), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    cert_path = write_secret(directory / f"{name}.pem", pem)
    key_path = write_secret(directory / f"{name}.key", _key_pem(key))
    return TlsFiles(ca.cert, str(cert_path), str(key_path))


def channel(
    address: str, tls: TlsFiles | None, options: list[tuple[str, Any]] | None = None
) -> grpc.Channel:
    """A blocking channel to ``address``: TLS verified against ``tls.ca`` (showing
    ``tls``'s certificate if it has one), or plaintext when ``tls`` is None."""
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(
        address, tls.channel_credentials(), options=[*(options or []), *tls.options()]
    )


def aio_channel(
    address: str, tls: TlsFiles | None, options: list[tuple[str, Any]] | None = None
) -> grpc.aio.Channel:
    """``channel`` for asyncio."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(
        address, tls.channel_credentials(), options=[*(options or []), *tls.options()]
    )


def files(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> TlsFiles | None:
    """The ``TlsFiles`` of settings' paths: None (plaintext) without a CA; a certificate
    needs its key."""
    if ca is None:
        return None
    if (cert is None) != (key is None):
        raise InvalidSpec("tls", ["a certificate and its key go together"])
    return TlsFiles(str(ca), str(cert) if cert else None, str(key) if key else None)


def link_address(address: str) -> str:
    """Where a Keeper at ``address`` serves its AppMasters' link under mutual TLS: the
    next port, on the same host (so a drill partitions both by the host's address)."""
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + LINK_PORT_OFFSET}"


LINK_PORT_OFFSET = 1
