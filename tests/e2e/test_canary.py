"""Secrets stay where they belong: a canary used as a password, one used as a token, one typed by the user
and one printed by the guest never appear in the audit file, the daemon's log or any API answer other than
the console stream itself (the scrollback, which is the console's own bytes)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import aiohttp
import pytest

from serialmuxd.auth.passwords import hash_password
from serialmuxd.auth.tokens import token_digest

from .support import GuestPty, TcpClient, eventually, running_daemon

pytestmark = pytest.mark.asyncio

PASSWORD = "CANARY-password-1a2b3c"
TOKEN = "smx_CANARYtokenCANARYtokenCANARYtokenCANARYto"
TYPED = "CANARY-typed-4d5e6f"
PRINTED = "CANARY-printed-7a8b9c"


async def test_canaries_never_leak(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    guest = GuestPty()
    users = tmp_path / "users.toml"
    users.write_text(
        f'[[users]]\nname = "alice"\npassword_hash = "{hash_password(PASSWORD)}"\n'
        'grants = [{ role = "operator", ports = ["vm1"] }]\n'
        f'[[tokens]]\nname = "bot"\nsha256 = "{token_digest(TOKEN)}"\n'
        'grants = [{ role = "admin", ports = ["*"] }]\n'
    )
    users.chmod(0o600)
    audit = tmp_path / "audit.jsonl"
    config = f"""
[daemon]
log_level = "debug"
[auth]
users_file = "{users}"
[audit]
file = "{audit}"
[http]
listen = "127.0.0.1:0"
[[ports]]
name = "vm1"
device = "tty:{guest.path}"
telnet = "127.0.0.1:0"
raw = true
replay_bytes = 0
"""
    answers: list[str] = []
    async with running_daemon(config, online=("vm1",), cleanup=guest.close) as daemon:
        client = await TcpClient.connect("127.0.0.1", daemon.listener("vm1", "raw").tcp_port)
        await client.expect(b"login: ")
        await client.send(b"alice\n")
        await client.expect(b"Password: ")
        await client.send(PASSWORD.encode() + b"\n")
        await client.expect(b"you have write access")
        await client.send(TYPED.encode() + b"\r")
        await guest.expect(TYPED.encode())
        guest.write(PRINTED.encode() + b"\r\n")
        await client.expect(PRINTED.encode())
        # A wrong password that embeds the canary, and the token in every place a client may put it.
        wrong = await TcpClient.connect("127.0.0.1", daemon.listener("vm1", "raw").tcp_port)
        await wrong.expect(b"login: ")
        await wrong.send(b"alice\n" + PASSWORD.encode() + b"-wrong\n")
        await wrong.expect(b"Login incorrect")
        await wrong.close()
        await client.close()  # the writer leaves, so the API may put keys on the line
        await eventually(lambda: daemon.hubs["vm1"].status().writer is None, "the writer gone")
        assert daemon.http_address is not None
        base = "http://{}:{}".format(*daemon.http_address)
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as http:
            for path in ("/api/v1/ports", "/api/v1/ports/vm1", "/api/v1/console", "/api/v1/ports/vm1/state"):
                async with http.get(base + path, headers=bearer) as response:
                    answers.append(await response.text())
            async with http.post(
                base + "/api/v1/ports/vm1/keys", headers=bearer, json={"keys": ["F1"]}
            ) as response:
                answers.append(await response.text())
            basic = {"Authorization": "Basic " + base64.b64encode(f"alice:{PASSWORD}x".encode()).decode()}
            async with http.get(base + "/api/v1/ports", headers=basic) as response:
                answers.append(await response.text())
            async with http.get(
                f"{base}/api/v1/ports/vm1/scrollback?format=text", headers=bearer
            ) as response:
                stream = await response.text()
    logged = capsys.readouterr()
    audit_text = audit.read_text()
    events = {json.loads(line)["event"] for line in audit_text.splitlines()}
    assert {"login_ok", "login_failed", "attach", "api_input"} <= events  # the trail was written
    assert PRINTED in stream  # the console stream itself carries what the guest printed
    for where, text in (("audit", audit_text), ("log", logged.out + logged.err), ("api", "\n".join(answers))):
        for canary in (PASSWORD, TOKEN, TYPED, PRINTED):
            assert canary not in text, f"{canary} leaked into the {where}"
