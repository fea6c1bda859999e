"""Telnet login with [auth], through the real Debian ``telnet`` client on a real PTY and raw sockets: the
prompt, the unechoed password, a wrong password, token login for scripts, the throttle slowing one
address while another logs in at once, an idle-connection flood that cannot lock a real user out, the
grace time, and anonymous access on a loopback-only daemon."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from serialmuxd.auth.passwords import hash_password
from serialmuxd.auth.tokens import new_token, token_digest
from serialmuxd.daemon import Daemon

from .support import GuestPty, PtyChild, TcpClient, running_daemon

pytestmark = pytest.mark.asyncio

PASSWORD = "canary-telnet-Pw-4c1d"


@dataclass
class Env:
    daemon: Daemon
    guest: GuestPty
    token: str

    @property
    def port(self) -> int:
        return self.daemon.listener("vm1", "telnet").tcp_port


def _config(tmp_path: Path, guest: GuestPty, token: str, auth_extra: str = "") -> str:
    users = tmp_path / "users.toml"
    users.write_text(
        f"""
[[users]]
name = "alice"
password_hash = "{hash_password(PASSWORD)}"
grants = [{{ role = "operator", ports = ["vm1"] }}]
[[users]]
name = "vera"
password_hash = "{hash_password(PASSWORD)}"
grants = [{{ role = "viewer", ports = ["vm1"] }}]
[[tokens]]
name = "script"
sha256 = "{token_digest(token)}"
grants = [{{ role = "operator", ports = ["vm1"] }}]
"""
    )
    users.chmod(0o600)
    return f"""
[daemon]
log_level = "warning"
[auth]
users_file = "{users}"
{auth_extra}
[[ports]]
name = "vm1"
device = "tty:{guest.path}"
telnet = "127.0.0.1:0"
raw = false
replay_bytes = 0
"""


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    guest = GuestPty()
    token = new_token()
    async with running_daemon(
        _config(tmp_path, guest, token), online=("vm1",), cleanup=guest.close
    ) as daemon:
        yield Env(daemon, guest, token)


async def _login(client: TcpClient, user: bytes, password: bytes) -> None:
    await client.expect(b"login: ")
    await client.send(user + b"\r\n")
    await client.expect(b"Password: ")
    await client.send(password + b"\r\n")


async def test_real_telnet_client_logs_in_and_the_password_is_not_echoed(env: Env) -> None:
    child = PtyChild(["telnet", "127.0.0.1", str(env.port)])
    try:
        await child.expect(b"login: ")
        child.write(b"alice\r")
        await child.expect(b"Password: ")
        child.write(PASSWORD.encode() + b"\r")
        await child.expect(b"you have write access")
        assert b"alice" in child.buffer and PASSWORD.encode() not in child.buffer
        child.write(b"typed-after-login\r")
        await env.guest.expect(b"typed-after-login")
        assert PASSWORD.encode() not in env.guest.buffer  # nothing of the login reached the guest
    finally:
        child.close()


async def test_real_telnet_client_with_a_wrong_password_is_refused_three_times(env: Env) -> None:
    child = PtyChild(["telnet", "127.0.0.1", str(env.port)])
    try:
        for _ in range(3):
            await child.expect(b"login: ")
            mark = len(child.buffer)
            child.write(b"alice\r")
            await child.expect(b"Password: ", start=mark)
            child.write(b"not-the-password\r")
            await child.expect(b"Login incorrect", start=mark, timeout_s=20)
        await child.expect(b"too many failed logins")
        await child.expect(b"Connection closed by foreign host")
        assert env.daemon.hubs["vm1"].status().sessions == 0
    finally:
        child.close()


async def test_a_viewer_logs_in_read_only_and_a_token_logs_in_for_scripts(env: Env) -> None:
    viewer = await TcpClient.connect("127.0.0.1", env.port)
    script = await TcpClient.connect("127.0.0.1", env.port)
    try:
        await _login(viewer, b"vera", PASSWORD.encode())
        await viewer.expect(b"vera may not type into this console on vm1")
        await _login(script, b"token", env.token.encode())
        await script.expect(b"you have write access")
        await script.send(b"from-the-script\r")
        await env.guest.expect(b"from-the-script")
    finally:
        await viewer.close()
        await script.close()


async def test_brute_force_from_one_address_is_slowed_another_logs_in_at_once(env: Env) -> None:
    attacker = await TcpClient.connect("127.0.0.1", env.port)
    try:
        for attempt in range(3):  # the free failures of this address...
            mark = len(attacker.buffer)
            await _login(attacker, b"alice", b"guess" + str(attempt).encode())
            await attacker.expect(b"Login incorrect", start=mark)
        attacker2 = await TcpClient.connect("127.0.0.1", env.port)
        await _login(attacker2, b"alice", b"guess-4")  # ...the fourth is answered, and makes the next wait
        await attacker2.expect(b"Login incorrect")
        started = time.monotonic()
        mark = len(attacker2.buffer)
        await _login(attacker2, b"alice", b"guess-5")
        await attacker2.expect(b"Login incorrect", start=mark)
        assert time.monotonic() - started >= 0.9  # held about a second before being answered
        await attacker2.close()
        # Meanwhile another address logs in without waiting.
        reader, writer = await asyncio.open_connection("127.0.0.1", env.port, local_addr=("127.0.0.2", 0))
        other = TcpClient(reader, writer)
        started = time.monotonic()
        await _login(other, b"alice", PASSWORD.encode())
        await other.expect(b"you have write access")
        assert time.monotonic() - started < 5
        await other.close()
    finally:
        await attacker.close()


async def test_an_idle_flood_from_one_address_cannot_lock_out_another(env: Env) -> None:
    idle = [await TcpClient.connect("127.0.0.1", env.port) for _ in range(10)]
    try:
        for client in idle:
            await client.expect(b"login: ")
        refused = await TcpClient.connect("127.0.0.1", env.port)
        await refused.expect(b"too many connections are waiting to log in")
        await refused.wait_eof()
        await refused.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", env.port, local_addr=("127.0.0.2", 0))
        real = TcpClient(reader, writer)
        await _login(real, b"alice", PASSWORD.encode())
        await real.expect(b"you have write access")
        await real.close()
    finally:
        for client in idle:
            await client.close()


async def test_login_grace_time_ends_an_idle_prompt(tmp_path: Path) -> None:
    guest = GuestPty()
    config = _config(tmp_path, guest, new_token(), "login_grace_s = 0.5")
    async with running_daemon(config, online=("vm1",), cleanup=guest.close) as daemon:
        client = await TcpClient.connect("127.0.0.1", daemon.listener("vm1", "telnet").tcp_port)
        await client.expect(b"login: ")
        await client.expect(b"login timed out after 0.5 s")
        await client.wait_eof()
        await client.close()


async def test_anonymous_viewer_on_a_loopback_daemon(tmp_path: Path) -> None:
    guest = GuestPty()
    config = _config(tmp_path, guest, new_token(), 'anonymous = "viewer"')
    async with running_daemon(config, online=("vm1",), cleanup=guest.close) as daemon:
        client = await TcpClient.connect("127.0.0.1", daemon.listener("vm1", "telnet").tcp_port)
        await client.expect(b"login: ")
        await client.send(b"\r\n")  # Enter alone: no user
        await client.expect(re.compile(rb"may not type into this console"))
        guest.write(b"seen anonymously\r\n")
        await client.expect(b"seen anonymously")
        await client.close()
