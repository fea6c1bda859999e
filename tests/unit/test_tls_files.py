"""``load_server_context`` on files only (no sockets): every start-up refusal is one line naming the file,
a good pair gives a context with the documented settings, and ``client_identities`` reads a certificate
dict in the documented order.  The handshakes themselves are in tests/e2e/test_tls.py."""

from __future__ import annotations

import datetime as dt
import ssl
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from serialmuxd import tls
from serialmuxd.errors import StartupError
from serialmuxd.tls import client_identities, load_server_context


@dataclass(frozen=True)
class Files:
    cert: Path
    key: Path
    ca: Path


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def files(tmp_path: Path, ca: trustme.CA) -> Files:
    leaf = ca.issue_cert("localhost", common_name="serialmuxd.test")
    return Files(
        cert=_write(tmp_path / "cert.pem", b"".join(blob.bytes() for blob in leaf.cert_chain_pems), 0o644),
        key=_write(tmp_path / "key.pem", leaf.private_key_pem.bytes()),
        ca=_write(tmp_path / "ca.pem", ca.cert_pem.bytes(), 0o644),
    )


def _refused(path: Path, cert: Path, key: Path, client_ca: Path | None = None) -> str:
    """The StartupError message for loading these files; it must be one line and name ``path``."""
    with pytest.raises(StartupError) as info:
        load_server_context(cert, key, client_ca)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert str(path) in message
    return message


def _encrypted(key_pem: bytes, fmt: serialization.PrivateFormat) -> bytes:
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM, fmt, serialization.BestAvailableEncryption(b"a passphrase")
    )


def _lax_host_context(protocol: int) -> ssl.SSLContext:
    """An SSLContext as a host whose openssl.cnf allows TLS 1.0 and compression would hand it out.  Debian's
    openssl.cnf says TLS 1.2, which would hide a missing setting."""
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.options &= ~(ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION)
    return context


class _LaxHostSsl(types.ModuleType):
    """The ssl module as serialmuxd.tls sees it, but with ``_lax_host_context`` as its SSLContext."""

    SSLContext = staticmethod(_lax_host_context)

    def __getattr__(self, name: str) -> Any:
        return getattr(ssl, name)


# -- a good pair -----------------------------------------------------------------------------------------
def test_a_good_pair_gives_tls12_minimum_no_compression_and_the_stdlib_ciphers(
    files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls, "ssl", _LaxHostSsl("ssl"))
    context = load_server_context(files.cert, files.key, None)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION
    # The stdlib's default cipher string, untouched; and none of the names a weak suite would carry.
    stdlib = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).get_ciphers()
    ciphers = [cipher["name"] for cipher in context.get_ciphers()]
    assert ciphers == [cipher["name"] for cipher in stdlib]
    assert not [name for name in ciphers if any(weak in name for weak in ("NULL", "RC4", "MD5", "DES-CBC3"))]
    assert context.verify_mode == ssl.CERT_NONE  # no client CA: no client certificates asked for


def test_with_a_client_ca_certificates_are_optional_and_only_that_ca_is_trusted(
    files: Files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in for the system's CA store, where OpenSSL looks for default trust anchors: were those
    # loaded, any certificate a public CA issued would verify.  (The real store is a hashed directory that
    # OpenSSL reads lazily, so counting it proves nothing.)
    system_store = _write(tmp_path / "system-cas.pem", trustme.CA().cert_pem.bytes(), 0o644)
    monkeypatch.setenv("SSL_CERT_FILE", str(system_store))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-dir"))
    control = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    control.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    assert control.cert_store_stats()["x509_ca"] == 1
    context = load_server_context(files.cert, files.key, files.ca)
    assert context.verify_mode == ssl.CERT_OPTIONAL
    assert context.get_ca_certs(binary_form=True) == [ssl.PEM_cert_to_DER_cert(files.ca.read_text())]


def test_sslkeylogfile_is_ignored(files: Files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ssl.create_default_context() would log every session's keys to this file.
    monkeypatch.setenv("SSLKEYLOGFILE", str(tmp_path / "keys.log"))
    assert load_server_context(files.cert, files.key, files.ca).keylog_filename is None


def test_a_group_readable_key_is_accepted(files: Files) -> None:
    files.key.chmod(0o640)  # Debian's root:ssl-cert convention
    load_server_context(files.cert, files.key, None)


# -- refusals --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602, 0o601, 0o660, 0o666])
def test_a_key_other_users_can_read_or_write_is_refused(files: Files, mode: int) -> None:
    files.key.chmod(mode)
    message = _refused(files.key, files.cert, files.key)
    assert f"mode {mode:04o}" in message and "other users" in message


@pytest.mark.parametrize("which", ["cert", "key", "ca"])
def test_a_missing_file_is_refused(files: Files, which: str) -> None:
    missing = files.cert.parent / f"missing-{which}.pem"
    args = {"cert": files.cert, "key": files.key, "ca": files.ca, which: missing}
    message = _refused(missing, args["cert"], args["key"], args["ca"])
    assert "no such file" in message


@pytest.mark.parametrize("which", ["cert", "key", "ca"])
def test_an_unreadable_file_is_refused(files: Files, which: str) -> None:
    # A directory: unreadable even as root (chmod 000 is not, for root).
    directory = files.cert.parent / f"dir-{which}"
    directory.mkdir(mode=0o700)
    args = {"cert": files.cert, "key": files.key, "ca": files.ca, which: directory}
    _refused(directory, args["cert"], args["key"], args["ca"])


def test_a_key_of_another_certificate_is_refused(files: Files, ca: trustme.CA, tmp_path: Path) -> None:
    other = _write(tmp_path / "other-key.pem", ca.issue_cert("localhost").private_key_pem.bytes())
    message = _refused(other, files.cert, other)
    assert "does not match the certificate" in message and str(files.cert) in message


def test_an_expired_certificate_is_refused_naming_its_not_after(ca: trustme.CA, tmp_path: Path) -> None:
    not_after = dt.datetime(2024, 3, 1, 12, 30, tzinfo=dt.UTC)
    leaf = ca.issue_cert("localhost", not_before=not_after - dt.timedelta(days=30), not_after=not_after)
    cert = _write(tmp_path / "expired.pem", leaf.cert_chain_pems[0].bytes(), 0o644)
    key = _write(tmp_path / "key.pem", leaf.private_key_pem.bytes())
    message = _refused(cert, cert, key)
    assert "expired" in message and "notAfter 2024-03-01 12:30:00 UTC" in message


@pytest.mark.parametrize(
    "fmt", [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL]
)
def test_an_encrypted_key_is_refused_as_such(files: Files, fmt: serialization.PrivateFormat) -> None:
    _write(files.key, _encrypted(files.key.read_bytes(), fmt))
    assert "encrypted" in _refused(files.key, files.cert, files.key)


def test_openssl_never_prompts_for_a_passphrase(files: Files, monkeypatch: pytest.MonkeyPatch) -> None:
    # Belt and braces: were the key check to miss an encrypted key, OpenSSL would ask its default callback,
    # which prompts on the terminal.  Skip the check and the refusing callback still answers.
    monkeypatch.setattr(tls, "_check_key", lambda *args: None)
    _write(files.key, _encrypted(files.key.read_bytes(), serialization.PrivateFormat.PKCS8))
    assert "encrypted" in _refused(files.key, files.cert, files.key)


def test_a_ca_file_without_a_certificate_is_refused(files: Files) -> None:
    _write(files.ca, files.key.read_bytes(), 0o600)  # a PEM file, but a key
    assert "no PEM certificate" in _refused(files.ca, files.cert, files.key, files.ca)


def test_a_certificate_file_without_a_certificate_is_refused(files: Files) -> None:
    _write(files.cert, b"not a certificate\n", 0o644)
    assert "no PEM certificate" in _refused(files.cert, files.cert, files.key)


def test_a_key_file_without_a_key_is_refused(files: Files) -> None:
    _write(files.key, files.cert.read_bytes())
    assert "no usable PEM private key" in _refused(files.key, files.cert, files.key)


# -- identities from a certificate dict ------------------------------------------------------------------
class _FakeSslObject:
    def __init__(self, cert: dict[str, Any] | None) -> None:
        self.cert = cert

    def getpeercert(self) -> dict[str, Any] | None:
        return self.cert


def test_identities_are_the_cns_then_dns_email_uri_sans_in_certificate_order() -> None:
    cert = {
        "subject": ((("organizationName", "Example"),), (("commonName", "alice"),)),
        "subjectAltName": (
            ("URI", "spiffe://example/alice"),
            ("IP Address", "192.0.2.1"),
            ("DNS", "alice"),  # the CN again: listed once
            ("email", "alice@example.com"),
            ("DirName", ((("commonName", "mallory"),),)),
            ("DNS", "alice.example"),
        ),
    }
    got = client_identities(_FakeSslObject(cert))  # type: ignore[arg-type]
    assert got == ("alice", "spiffe://example/alice", "alice@example.com", "alice.example")


@pytest.mark.parametrize("cert", [None, {}])
def test_no_certificate_or_an_unverified_one_has_no_identities(cert: dict[str, Any] | None) -> None:
    # getpeercert() is None without a certificate and {} for one that was not verified (CERT_NONE).
    assert client_identities(_FakeSslObject(cert)) == ()  # type: ignore[arg-type]
    assert client_identities(None) == ()
