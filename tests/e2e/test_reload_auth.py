"""Reloading [auth] and [tls] in a real daemon process: a token added to the users file works and a removed
one stops working without a restart; a user removed from the users file loses the session (told why) while
another keeps hers; new TLS handshakes get the rotated certificate while a connection made before keeps
working.  Real TLS clients, the real telnet login prompt, the real HTTP API."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import pytest
import trustme

from serialmuxd.auth.passwords import hash_password
from serialmuxd.auth.tokens import new_token, token_digest

from .reload_support import DaemonProcess, daemon_process
from .support import GuestPty, TcpClient
from .test_cli import free_port

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


def _users(path: Path, users: dict[str, str], tokens: dict[str, str]) -> None:
    """``users``: name -> password hash (operator on vm1); ``tokens``: name -> token (viewer on *)."""
    text = "".join(
        f'[[users]]\nname = "{name}"\npassword_hash = "{hashed}"\n'
        'grants = [{ role = "operator", ports = ["vm1"] }]\n'
        for name, hashed in users.items()
    )
    text += "".join(
        f'[[tokens]]\nname = "{name}"\nsha256 = "{token_digest(token)}"\n'
        'grants = [{ role = "viewer", ports = ["*"] }]\n'
        for name, token in tokens.items()
    )
    path.write_text(text)
    path.chmod(0o600)


def _certificate(ca: trustme.CA, tmp: Path, name: str) -> None:
    issued = ca.issue_cert("127.0.0.1", common_name=name)
    (tmp / "cert.pem").write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    key = tmp / "key.pem"
    key.write_bytes(issued.private_key_pem.bytes())
    key.chmod(0o600)


async def _tls_connect(daemon: DaemonProcess, kind: str, ca: trustme.CA) -> tuple[TcpClient, str]:
    """A verified TLS connection; returns the client and the server certificate's common name."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    reader, writer = await asyncio.open_connection(
        *daemon.address("vm1", kind), ssl=context, server_hostname="127.0.0.1"
    )
    subject = dict(pair[0] for pair in writer.get_extra_info("peercert")["subject"])
    return TcpClient(reader, writer), subject["commonName"]


async def _login(client: TcpClient, user: bytes, password: bytes) -> None:
    await client.expect(b"login: ")
    await client.send(user + b"\r\n")
    await client.expect(b"Password: ")
    await client.send(password + b"\r\n")


async def _api_status(http_port: int, token: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"http://127.0.0.1:{http_port}/api/v1/ports", headers={"Authorization": f"Bearer {token}"}
        ) as resp,
    ):
        return resp.status


async def test_users_tokens_and_the_certificate_change_without_a_restart(tmp_path: Path) -> None:
    guest, ca = GuestPty(), trustme.CA()
    old_token, new_token_ = new_token(), new_token()
    hashes = {"alice": hash_password("pw-alice"), "bob": hash_password("pw-bob")}
    users = tmp_path / "users.toml"
    _users(users, hashes, {"ci-old": old_token})
    _certificate(ca, tmp_path, "first")
    http_port = free_port()
    config = tmp_path / "serialmuxd.toml"
    config.write_text(
        f"""
[daemon]
log_format = "json"
[auth]
users_file = "{users}"
[tls]
cert_file = "{tmp_path / "cert.pem"}"
key_file = "{tmp_path / "key.pem"}"
[http]
listen = "127.0.0.1:{http_port}"
[[ports]]
name = "vm1"
device = "tty:{guest.path}"
telnet = "127.0.0.1:0"
telnet_readonly = "127.0.0.1:0"
raw = true
telnet_tls = true
replay_bytes = 0
"""
    )
    try:
        async with daemon_process(config, http_port) as daemon:
            alice, name = await _tls_connect(daemon, "raw", ca)
            assert name == "first"
            await _login(alice, b"alice", b"pw-alice")
            await alice.expect(b"you have write access")
            bob, _ = await _tls_connect(daemon, "raw-readonly", ca)
            await _login(bob, b"bob", b"pw-bob")
            await bob.expect(b"read-only")
            assert await _api_status(http_port, old_token) == 200
            assert await _api_status(http_port, new_token_) == 401

            # bob leaves the users file, the old token goes, a new one comes; the certificate is renewed.
            _users(users, {"alice": hashes["alice"]}, {"ci-new": new_token_})
            _certificate(ca, tmp_path, "second")
            notices = await daemon.reload()
            assert "READY=1" in notices[-1] and daemon.events("reloaded"), daemon.log[-5:]

            await bob.expect(b"disconnected: user bob was removed from the users file (configuration reload)")
            await bob.wait_eof()
            assert await _api_status(http_port, new_token_) == 200
            assert await _api_status(http_port, old_token) == 401

            # alice's session, on a connection made with the old certificate, carries on both ways.
            start = len(alice.buffer)
            await guest.send(b"after-reload\r\n")
            await alice.expect(b"after-reload", start=start)
            await alice.send(b"typed-after\r")
            await guest.expect(b"typed-after")
            # A new handshake gets the new certificate, from the same listener.
            fresh, name = await _tls_connect(daemon, "raw", ca)
            assert name == "second"
            await fresh.expect(b"login: ")
            for client in (alice, bob, fresh):
                await client.close()
    finally:
        guest.close()
