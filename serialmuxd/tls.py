"""TLS for the listeners: one server context built from ``[tls]``, and the names a client certificate carries.

Theory of operation
-------------------
``load_server_context`` runs once at start-up, before any listener binds, and either returns a ready
``ssl.SSLContext`` or raises ``StartupError`` with one line naming the file at fault.  Everything that can
be known about the files is checked here, so that a bad file stops the daemon with a clear message instead
of failing each client's handshake with an OpenSSL reason code nobody sees:

1. the certificate file is read and parsed (PEM, leaf first, then any intermediates), and no certificate in
   it may have expired: that is refused, naming its notAfter.  One not yet valid is accepted: before the
   clock is set at early boot that check would stop a daemon whose certificate is fine;
2. the key file must not be readable or writable by other users (see *Key file permissions*), must hold an
   unencrypted PEM private key, and that key must belong to the leaf certificate;
3. the optional client CA file must hold at least one PEM certificate;
4. only then does OpenSSL load the files (``load_cert_chain``/``load_verify_locations``); an error it still
   finds is reported the same way.

The context is built from a bare ``SSLContext(PROTOCOL_TLS_SERVER)``, not ``ssl.create_default_context``,
which honours ``SSLKEYLOGFILE`` (it would write every session's keys to a file named by the environment)
and whose settings change between Python versions.  Client certificates are verified against
``client_ca_file`` alone, never the system's CA store (``load_default_certs``): with that, any certificate a
public CA ever issued would verify and yield identities.

The bare context already carries the stdlib's secure cipher string (``@SECLEVEL=2``, ECDHE/DHE with
AES-GCM/ChaCha20, no SHA-1/NULL/aNULL), which is kept as is; on top of it:

* ``minimum_version = TLSv1_2``, set explicitly so that it does not depend on the host's ``openssl.cnf``
  (Debian's happens to say TLS 1.2 too, other systems' may not);
* ``OP_NO_COMPRESSION`` (CRIME) and ``OP_NO_RENEGOTIATION`` (client-initiated renegotiation in TLS 1.2 is a
  cheap way to make the server do expensive handshakes, and nothing here needs it).

Client certificates: ``CERT_OPTIONAL``
--------------------------------------
With ``client_ca_file`` the server asks for a client certificate but does not insist on one.  A browser user
without a certificate must still reach the sign-in page and log in with a password, and scripts use tokens;
``CERT_REQUIRED`` would lock them out at the TLS layer with no message at all.  What ``CERT_OPTIONAL`` still
guarantees (this is OpenSSL's ``SSL_VERIFY_PEER`` without ``FAIL_IF_NO_PEER_CERT``): a certificate that *is*
presented must verify against ``client_ca_file`` (chain, validity dates, and the ``clientAuth`` purpose),
otherwise the handshake fails.  So after a handshake there are exactly two cases, no certificate or a
verified one, and ``client_identities`` returns its names only in the second.  A certificate is therefore
one more way to authenticate, never a requirement; whether a listener demands one is the access layer's
decision, not the handshake's.

Key file permissions
--------------------
A key file with any permission bit for *other* users (``o+r``, ``o+w``, ``o+x``) is refused, and so is a
group-writable one.  Group *read* is allowed on purpose: Debian's convention for private keys is
``root:ssl-cert`` mode ``0640`` (``/etc/ssl/private``, the ``ssl-cert`` package), and a daemon running as a
user in the ``ssl-cert`` group reads its key through that group.  Refusing ``0640`` would push operators to
copy keys around or run as root.  The mode checked is the target's (``stat`` follows symlinks, as Let's
Encrypt's ``live/`` directory is made of symlinks), because that is what protects the bytes.  Readability is
tested by reading, not by ``os.access``: as root ``access`` says yes to everything.

Encrypted keys are out of scope: there is nowhere to keep a passphrase that would be safer than keeping the
key itself ``0600``.  They are refused with a message saying so.  OpenSSL is also given a passphrase callback
that refuses, because without one it would prompt for the passphrase on the controlling terminal and block
start-up.

``client_identities``
---------------------
From a verified client certificate: each subject commonName, then the subjectAltName entries of type DNS,
email and URI in the order the certificate lists them, without duplicates (a CN is often repeated as a DNS
name).  IP addresses, directory names and other SAN types are not user names and are left out.  The access
layer matches these names against users; this module only reads them.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from .errors import StartupError

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
# Subject alternative name types that can name a user, as ssl.getpeercert() spells them.
IDENTITY_SAN_TYPES = ("DNS", "email", "URI")
# Other users may do nothing with the key; the group may read it (root:ssl-cert 0640), not write it.
_KEY_FORBIDDEN_BITS = stat.S_IRWXO | stat.S_IWGRP
# Message prefixes: each names the kind of file, then the path (the config key it came from is obvious).
_CERT, _KEY, _CA = "TLS certificate file", "TLS key file", "TLS client CA file"
_ENCRYPTED = "the private key is encrypted; passphrases are not supported (store it unencrypted, mode 0600)"


def load_server_context(cert_file: Path, key_file: Path, client_ca_file: Path | None) -> ssl.SSLContext:
    """A TLS ≥ 1.2 server context for ``cert_file``/``key_file``; with ``client_ca_file``, client
    certificates are asked for and, when presented, verified against it (``CERT_OPTIONAL``).

    Raises ``StartupError`` naming the file for a missing or unreadable file, a key readable or writable by
    other users, an encrypted key, a key that does not match the certificate, an expired certificate, or a
    CA file without a certificate."""
    leaf = _check_certificates(cert_file)
    _check_key(key_file, leaf, cert_file)
    if client_ca_file is not None:
        _check_ca_file(client_ca_file)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(cert_file, key_file, password=_refuse_passphrase)
    except _PassphraseAsked:
        _fail(key_file, _ENCRYPTED, kind=_KEY)
    except (ssl.SSLError, OSError) as exc:
        _fail(cert_file, f"OpenSSL cannot load it with key file {key_file}: {_reason(exc)}")
    if client_ca_file is None:
        context.verify_mode = ssl.CERT_NONE
    else:
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            _fail(client_ca_file, f"OpenSSL cannot load it: {_reason(exc)}", kind=_CA)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_identities(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> tuple[str, ...]:
    """The subject CNs, then the DNS/email/URI subject alternative names, of the peer's *verified*
    certificate; ``()`` without TLS or without a (verified) certificate.  Call after the handshake."""
    if ssl_object is None:
        return ()
    # Without SSL_VERIFY_PEER the stdlib returns {} even if a certificate was received, so an unverified
    # certificate can never produce a name here.
    cert = ssl_object.getpeercert()
    if not cert:
        return ()
    # getpeercert()'s dict is loosely typed (nested tuples); read it defensively, keeping strings only.
    names: list[str] = []
    subject = cert.get("subject")
    for rdn in subject if isinstance(subject, tuple) else ():
        names.extend(value for key, value in _string_pairs(rdn) if key == "commonName")
    sans = _string_pairs(cert.get("subjectAltName"))
    names.extend(value for kind, value in sans if kind in IDENTITY_SAN_TYPES)
    return tuple(dict.fromkeys(name for name in names if name))


def _string_pairs(value: object) -> Iterator[tuple[str, str]]:
    """The ``(key, value)`` string pairs in a tuple from getpeercert() (an RDN, or the SAN list)."""
    if not isinstance(value, tuple):
        return
    for item in value:
        if (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], str)
        ):
            yield item[0], item[1]


# -- checks ----------------------------------------------------------------------------------------------
def _check_certificates(cert_file: Path) -> x509.Certificate:
    data = _read(cert_file, _CERT)
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        _fail(cert_file, "no PEM certificate in it")
    now = dt.datetime.now(dt.UTC)
    for position, cert in enumerate(chain):
        which = "the certificate" if position == 0 else f"certificate {position + 1} ({_subject(cert)})"
        not_after = cert.not_valid_after_utc
        if not_after < now:
            _fail(cert_file, f"{which} expired: notAfter {not_after:%Y-%m-%d %H:%M:%S} UTC")
    return chain[0]


def _check_key(key_file: Path, leaf: x509.Certificate, cert_file: Path) -> None:
    try:
        mode = os.stat(key_file).st_mode
    except OSError as exc:
        _fail(key_file, _reason(exc), kind=_KEY)
    if not stat.S_ISREG(mode):
        _fail(key_file, "not a regular file", kind=_KEY)
    if mode & _KEY_FORBIDDEN_BITS:
        _fail(
            key_file,
            f"readable or writable by other users (mode {stat.S_IMODE(mode):04o}); "
            "allowed: 0600, or 0640 with a group such as ssl-cert",
            kind=_KEY,
        )
    data = _read(key_file, _KEY)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's way of saying "encrypted, and no password given"
        _fail(key_file, _ENCRYPTED, kind=_KEY)
    except (ValueError, UnsupportedAlgorithm):
        _fail(key_file, "no usable PEM private key in it", kind=_KEY)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        _fail(
            key_file,
            f"the private key does not match the certificate in {cert_file} ({_subject(leaf)})",
            kind=_KEY,
        )


def _check_ca_file(ca_file: Path) -> None:
    data = _read(ca_file, _CA)
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        _fail(ca_file, "no PEM certificate in it", kind=_CA)


# -- helpers ---------------------------------------------------------------------------------------------
class _PassphraseAsked(Exception):
    """OpenSSL asked for a key passphrase (raised from the callback, re-raised by ``load_cert_chain``)."""


def _refuse_passphrase() -> NoReturn:
    raise _PassphraseAsked


def _read(path: Path, kind: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        _fail(path, _reason(exc), kind=kind)


def _fail(path: Path, reason: str, *, kind: str = _CERT) -> NoReturn:
    raise StartupError(f"{kind} {path}: {reason}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return " ".join(str(exc).split()) or type(exc).__name__


def _subject(cert: x509.Certificate) -> str:
    # A subject is whatever its issuer wrote; RFC 4514 quoting leaves control characters alone, and the
    # message must stay one line of plain text.
    text = cert.subject.rfc4514_string()[:200]
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text) or "empty subject"
