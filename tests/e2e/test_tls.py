"""Real TLS handshakes on 127.0.0.1 against the context ``load_server_context`` builds: protocol versions,
and client certificates (CERT_OPTIONAL) read back with ``client_identities`` on the server side.

The server is ``asyncio.start_server`` with the context; its handler writes back, as one JSON line, the TLS
version and the identities it sees, so the client side can assert what the server decided.  A refused
handshake never reaches the handler, which the tests check by counting handler calls.

The refused-TLS-1.1 test first runs the same client against a deliberately permissive server: OpenSSL 3 and
Debian's openssl.cnf refuse TLS 1.1 on the *client* side too, and without that control the test would pass
even if our server accepted TLS 1.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import ssl
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from serialmuxd.tls import client_identities, load_server_context

pytestmark = pytest.mark.asyncio

TIMEOUT_S = 10.0


@dataclass
class Server:
    port: int
    ca: trustme.CA
    handled: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _server_files(ca: trustme.CA, directory: Path) -> tuple[Path, Path, Path]:
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key, client_ca = directory / "cert.pem", directory / "key.pem", directory / "client-ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    key.chmod(0o600)
    client_ca.write_bytes(ca.cert_pem.bytes())
    return cert, key, client_ca


@contextlib.asynccontextmanager
async def _serving(context: ssl.SSLContext, ca: trustme.CA) -> AsyncIterator[Server]:
    handled: list[dict[str, Any]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        seen = {"version": ssl_object.version(), "identities": list(client_identities(ssl_object))}
        handled.append(seen)
        writer.write(json.dumps(seen).encode() + b"\n")
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield Server(server.sockets[0].getsockname()[1], ca, handled)
    finally:
        server.close()
        await server.wait_closed()


@pytest_asyncio.fixture
async def server(ca: trustme.CA, tmp_path: Path) -> AsyncIterator[Server]:
    async with _serving(load_server_context(*_server_files(ca, tmp_path)), ca) as running:
        yield running


def _client_context(
    ca: trustme.CA,
    *,
    version: ssl.TLSVersion | None = None,
    configure: Callable[[ssl.SSLContext], None] | None = None,
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    if version is not None:
        context.minimum_version = context.maximum_version = version
    if configure is not None:
        configure(context)
    return context


def _legacy_client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client that really speaks TLS 1.1 (and only that): 1.0/1.1 need SHA-1 suites, below SECLEVEL 1."""
    context = _client_context(ca)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ssl.TLSVersion.TLSv1_1 is deprecated
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


async def _exchange(port: int, context: ssl.SSLContext) -> dict[str, Any]:
    """Handshake, then read the server's JSON line.  Raises when the handshake (or, in TLS 1.3, the
    server's verdict on our certificate, which arrives after our Finished) fails."""
    async with asyncio.timeout(TIMEOUT_S):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )
        try:
            line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    if not line:
        raise ConnectionError("closed by the server without an answer")
    answer: dict[str, Any] = json.loads(line)
    return answer


def _client_cert(
    ca: trustme.CA,
    common_name: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH,
) -> trustme.LeafCert:
    """A certificate signed by ``ca`` with any SANs (trustme cannot make URI SANs) and one extended key
    usage, valid for a day."""
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return trustme.LeafCert(key_pem, cert.public_bytes(serialization.Encoding.PEM), [])


# -- protocol versions -----------------------------------------------------------------------------------
async def test_a_tls11_client_is_refused(server: Server, tmp_path: Path) -> None:
    # Control: the same client completes a TLS 1.1 handshake with a server that allows it.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = ssl.TLSVersion.TLSv1_1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    cert, key, _ = _server_files(server.ca, tmp_path)
    permissive.load_cert_chain(cert, key)
    async with _serving(permissive, server.ca) as control:
        assert (await _exchange(control.port, _legacy_client_context(server.ca)))["version"] == "TLSv1.1"

    with pytest.raises((ssl.SSLError, ConnectionError)):
        await _exchange(server.port, _legacy_client_context(server.ca))
    assert server.handled == []


@pytest.mark.parametrize(
    ("version", "name"), [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")]
)
async def test_tls12_and_tls13_clients_are_accepted(
    server: Server, version: ssl.TLSVersion, name: str
) -> None:
    answer = await _exchange(server.port, _client_context(server.ca, version=version))
    assert answer == {"version": name, "identities": []}


# -- client certificates ---------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_a_certificate_from_the_configured_ca_yields_its_cn_and_sans(
    server: Server, version: ssl.TLSVersion
) -> None:
    leaf = _client_cert(
        server.ca,
        "alice",
        [
            x509.UniformResourceIdentifier("spiffe://example.test/alice"),
            x509.IPAddress(ipaddress.ip_address("192.0.2.7")),  # not a user name: left out
            x509.DNSName("alice.example.test"),
            x509.RFC822Name("alice@example.test"),
        ],
    )
    answer = await _exchange(
        server.port, _client_context(server.ca, version=version, configure=leaf.configure_cert)
    )
    assert answer["identities"] == [
        "alice",
        "spiffe://example.test/alice",
        "alice.example.test",
        "alice@example.test",
    ]


async def test_a_trustme_client_certificate_maps_cn_then_dns_and_email(server: Server) -> None:
    leaf = server.ca.issue_cert("bob.example.test", "bob@example.test", common_name="bob")
    answer = await _exchange(server.port, _client_context(server.ca, configure=leaf.configure_cert))
    assert answer["identities"] == ["bob", "bob.example.test", "bob@example.test"]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("problem", ["another CA", "expired", "for servers only"])
async def test_a_certificate_that_does_not_verify_fails_the_handshake(
    server: Server, version: ssl.TLSVersion, problem: str
) -> None:
    if problem == "another CA":
        leaf = trustme.CA().issue_cert("mallory.example.test", common_name="mallory")
    elif problem == "for servers only":  # extended key usage serverAuth: not a client certificate
        leaf = _client_cert(
            server.ca, "mallory", [x509.DNSName("mallory.example.test")], ExtendedKeyUsageOID.SERVER_AUTH
        )
    else:
        yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        leaf = server.ca.issue_cert(
            "mallory.example.test",
            common_name="mallory",
            not_before=yesterday - dt.timedelta(days=30),
            not_after=yesterday,
        )
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await _exchange(
            server.port, _client_context(server.ca, version=version, configure=leaf.configure_cert)
        )
    assert server.handled == []


async def test_no_certificate_is_accepted_with_no_identities(server: Server) -> None:
    answer = await _exchange(server.port, _client_context(server.ca))
    assert answer["identities"] == []
    assert server.handled == [answer]
