"""TLS through the real daemon: a telnet_tls listener and HTTPS with [tls]'s certificate; a client
certificate from client_ca_file signs in as its user without a prompt; TLS 1.1 is refused; a key file other
users can read stops the start-up with one line naming it (the real CLI, exit 1)."""

from __future__ import annotations

import asyncio
import ssl
import sys
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import trustme

from serialmuxd.auth.tokens import new_token, token_digest
from serialmuxd.daemon import Daemon

from .support import GuestPty, TcpClient, running_daemon

pytestmark = pytest.mark.asyncio


@dataclass
class Env:
    daemon: Daemon
    ca: trustme.CA
    guest: GuestPty
    token: str
    tmp: Path

    def client_context(self, user: str | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(context)
        if user is not None:
            self.ca.issue_cert(f"{user}@example.com", common_name=user).configure_cert(context)
        return context


def _write_tls(tmp: Path, ca: trustme.CA) -> tuple[Path, Path, Path]:
    server = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = tmp / "cert.pem", tmp / "key.pem", tmp / "ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    key.write_bytes(server.private_key_pem.bytes())
    key.chmod(0o600)
    ca.cert_pem.write_to_path(str(ca_file))
    return cert, key, ca_file


def _config(tmp: Path, guest: GuestPty, token: str, cert: Path, key: Path, ca_file: Path) -> str:
    users = tmp / "users.toml"
    users.write_text(
        '[[users]]\nname = "alice"\ngrants = [{ role = "operator", ports = ["vm1"] }]\n'
        f'[[tokens]]\nname = "ci"\nsha256 = "{token_digest(token)}"\n'
        'grants = [{ role = "viewer", ports = ["*"] }]\n'
    )
    users.chmod(0o600)
    return f"""
[daemon]
log_level = "warning"
[auth]
users_file = "{users}"
[tls]
cert_file = "{cert}"
key_file = "{key}"
client_ca_file = "{ca_file}"
[http]
listen = "127.0.0.1:0"
tls = true
[[ports]]
name = "vm1"
device = "tty:{guest.path}"
telnet = "127.0.0.1:0"
raw = true
telnet_tls = true
replay_bytes = 0
"""


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    ca, guest, token = trustme.CA(), GuestPty(), new_token()
    config = _config(tmp_path, guest, token, *_write_tls(tmp_path, ca))
    async with running_daemon(config, online=("vm1",), cleanup=guest.close) as daemon:
        yield Env(daemon, ca, guest, token, tmp_path)


async def _connect(env: Env, context: ssl.SSLContext) -> TcpClient:
    port = env.daemon.listener("vm1", "raw").tcp_port
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
    )
    return TcpClient(reader, writer)


async def test_a_client_certificate_signs_in_without_a_prompt(env: Env) -> None:
    client = await _connect(env, env.client_context("alice"))
    try:
        await client.expect(b"you have write access")
        assert b"login:" not in client.buffer
        await client.send(b"over-tls\r")
        await env.guest.expect(b"over-tls")
    finally:
        await client.close()


async def test_without_a_certificate_the_prompt_appears_over_tls(env: Env) -> None:
    client = await _connect(env, env.client_context())
    try:
        await client.expect(b"login: ")
        await client.send(b"token\r\n")
        await client.expect(b"Password: ")
        await client.send(env.token.encode() + b"\r\n")
        await client.expect(b"ci may not type into this console on vm1")
    finally:
        await client.close()


async def test_a_certificate_from_another_ca_fails_the_handshake(env: Env) -> None:
    context = env.client_context()
    trustme.CA().issue_cert("mallory@example.com", common_name="alice").configure_cert(context)
    try:
        client = await _connect(env, context)
    except (ssl.SSLError, ConnectionError):
        return  # TLS 1.2: the handshake itself fails
    # TLS 1.3: the server's verdict on the client certificate comes after the client's handshake ends; the
    # connection is then closed before a single byte of the console (or a login prompt) is sent.
    await client.wait_eof()
    assert client.buffer == b""
    await client.close()


async def test_tls_1_1_is_refused_and_1_2_accepted(env: Env) -> None:
    old = env.client_context()
    with warnings.catch_warnings():  # the point is to use what is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1_1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await _connect(env, old)
    new = env.client_context()
    new.maximum_version = ssl.TLSVersion.TLSv1_2
    client = await _connect(env, new)
    await client.expect(b"login: ")
    await client.close()


async def test_https_api_with_a_bearer_token(env: Env) -> None:
    assert env.daemon.http_address is not None
    host, port = env.daemon.http_address
    connector = aiohttp.TCPConnector(ssl=env.client_context())
    async with aiohttp.ClientSession(connector=connector) as http:
        headers = {"Authorization": f"Bearer {env.token}"}
        async with http.get(f"https://{host}:{port}/api/v1/ports", headers=headers) as response:
            assert response.status == 200
            assert [p["name"] for p in (await response.json())["ports"]] == ["vm1"]
    # Plain HTTP to the TLS listener gets nothing useful.
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://{host}:{port}/api/v1/ports") as response:
                await response.read()


async def test_a_key_others_can_read_stops_the_start_naming_the_file(tmp_path: Path) -> None:
    ca, guest = trustme.CA(), GuestPty()
    try:
        cert, key, ca_file = _write_tls(tmp_path, ca)
        key.chmod(0o644)
        config = tmp_path / "serialmuxd.toml"
        config.write_text(_config(tmp_path, guest, new_token(), cert, key, ca_file))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "serialmuxd", "run", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 1
        errors = [line for line in err.decode().splitlines() if line.startswith("serialmuxd:")]
        assert len(errors) == 1 and str(key) in errors[0], err
    finally:
        guest.close()
