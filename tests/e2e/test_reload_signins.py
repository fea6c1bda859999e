"""A reload that withdraws a credential ends what was opened with it, on every transport; a real
``serialmuxd run`` process (SIGHUP), the real login prompt over raw TCP, real WebSockets and HTTP requests
(aiohttp), the real OpenSSH client on a PTY, and the audit file.

* A user removed from the users file: the page session (its cookie stops working), the WebSocket opened
  with a ticket issued to it, the telnet-login session and the SSH session all end, each told why.
* A user whose password changed: the page session and the password login end; a token removed: the
  WebSocket it opened ends.  A user nothing happened to keeps everything.
* SSH keys: a key removed from a user who stays is refused at the next login and the session it opened
  ends, told why, while the session open with another key of hers goes on; a key added works without a
  restart; removing the user ends the rest.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from serialmuxd.auth.passwords import hash_password
from serialmuxd.auth.tokens import new_token, token_digest
from serialmuxd.frontends.ssh_hostkey import HOST_KEY_NAME

from .reload_support import DaemonProcess, daemon_process
from .support import GuestPty, PtyChild, TcpClient, eventually
from .test_cli import free_port
from .test_ssh import DENIED, keygen, pub

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]
needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs openssh-client (./dev installs it)")
COOKIE = "serialmuxd_session"
REMOVED = "(configuration reload)"


def write_users(
    path: Path, users: dict[str, tuple[str | None, list[Path]]], tokens: dict[str, str] | None = None
) -> None:
    """``users``: name -> (password hash or None, SSH keys); ``tokens``: name -> token.  Viewers of vm1."""
    text = ""
    for name, (hashed, keys) in users.items():
        text += f'[[users]]\nname = "{name}"\n'
        if hashed is not None:
            text += f'password_hash = "{hashed}"\n'
        if keys:
            text += "ssh_keys = [" + ", ".join(f'"{pub(key)}"' for key in keys) + "]\n"
        text += 'grants = [{ role = "viewer", ports = ["vm1"] }]\n'
    for name, token in (tokens or {}).items():
        text += f'[[tokens]]\nname = "{name}"\nsha256 = "{token_digest(token)}"\n'
        text += 'grants = [{ role = "viewer", ports = ["vm1"] }]\n'
    path.write_text(text)
    path.chmod(0o600)


def write_config(tmp: Path, users: Path, guest: GuestPty, http_port: int) -> Path:
    config = tmp / "serialmuxd.toml"
    config.write_text(
        f"""
[daemon]
log_format = "json"
state_dir = "{tmp / "state"}"
[auth]
users_file = "{users}"
[audit]
file = "{tmp / "audit.jsonl"}"
[http]
listen = "127.0.0.1:{http_port}"
[ssh]
listen = "127.0.0.1:0"
[[ports]]
name = "vm1"
device = "tty:{guest.path}"
telnet = "127.0.0.1:0"
raw = true
replay_bytes = 0
"""
    )
    return config


def audited(tmp: Path, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (tmp / "audit.jsonl").read_text().splitlines()]
    return [line for line in lines if line["event"] == event]


class Ssh:
    """The OpenSSH client against the daemon's SSH listener, checking its host key."""

    def __init__(self, daemon: DaemonProcess, tmp: Path) -> None:
        (line,) = [e for e in daemon.events("listening") if e.get("kind") == "ssh"]
        self.port = int(line["address"].rpartition(":")[2])
        kind, blob = (tmp / "state" / f"{HOST_KEY_NAME}.pub").read_text().split()[:2]
        self.known_hosts = tmp / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {kind} {blob}\n")
        self.children: list[PtyChild] = []

    def argv(self, key: Path, user: str = "vm1.ro") -> list[str]:
        return [
            "ssh", "-F", "/dev/null", "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-i", str(key), "-p", str(self.port), f"{user}@127.0.0.1",
        ]  # fmt: skip

    async def attach(self, key: Path) -> PtyChild:
        child = PtyChild(self.argv(key))
        self.children.append(child)
        await child.expect(b"[serialmuxd] attached to console vm1")
        return child

    async def refused(self, key: Path) -> bool:
        proc = await asyncio.create_subprocess_exec(
            *self.argv(key, "vm1.ro"),
            "who",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        return proc.returncode == 255 and DENIED in err

    def close(self) -> None:
        for child in self.children:
            child.close()


async def login(daemon: DaemonProcess, user: bytes, password: bytes) -> TcpClient:
    client = await daemon.connect("vm1", "raw")
    await client.expect(b"login: ")
    await client.send(user + b"\r\n")
    await client.expect(b"Password: ")
    await client.send(password + b"\r\n")
    await client.expect(b"attached to console vm1")
    return client


async def sign_in(http: aiohttp.ClientSession, base: str, user: str, password: str) -> tuple[str, str]:
    async with http.post(f"{base}/api/v1/session", json={"user": user, "password": password}) as resp:
        assert resp.status == 200, await resp.text()
        return resp.cookies[COOKIE].value, (await resp.json())["csrf"]


async def next_event(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while True:
        msg = await asyncio.wait_for(ws.receive(), 15)
        assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
        if msg.type is aiohttp.WSMsgType.TEXT and (event := json.loads(msg.data))["type"] == kind:
            return dict(event)


async def guest_bytes(ws: aiohttp.ClientWebSocketResponse, needle: bytes) -> None:
    data = b""
    while needle not in data:
        msg = await asyncio.wait_for(ws.receive(), 15)
        assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
        if msg.type is aiohttp.WSMsgType.BINARY:
            data += msg.data


async def status(http: aiohttp.ClientSession, base: str, cookie: str) -> int:
    async with http.get(f"{base}/api/v1/ports", headers={"Cookie": f"{COOKIE}={cookie}"}) as resp:
        return resp.status


@needs_ssh
async def test_removed_user_changed_password_and_removed_token_end_their_sessions(tmp_path: Path) -> None:
    guest, http_port = GuestPty(), free_port()
    base = f"http://127.0.0.1:{http_port}"
    bob_key = keygen(tmp_path / "key_bob")
    hashes = {name: hash_password(f"pw-{name}") for name in ("alice", "bob", "carol")}
    token = new_token()
    users = tmp_path / "users.toml"
    write_users(
        users,
        {"alice": (hashes["alice"], []), "bob": (hashes["bob"], [bob_key]), "carol": (hashes["carol"], [])},
        {"ci": token},
    )
    config = write_config(tmp_path, users, guest, http_port)
    ssh: Ssh | None = None
    try:
        async with daemon_process(config, http_port) as daemon, aiohttp.ClientSession() as http:
            ssh = Ssh(daemon, tmp_path)
            url = f"{base}/api/v1/ports/vm1/ws?mode=ro"
            cookies = {
                name: await sign_in(http, base, name, f"pw-{name}") for name in ("alice", "bob", "carol")
            }
            sockets = {
                name: await http.ws_connect(url, headers={"Cookie": f"{COOKIE}={cookies[name][0]}"})
                for name in ("alice", "carol")
            }
            bob_cookie, bob_csrf = cookies["bob"]
            async with http.post(
                f"{base}/api/v1/ports/vm1/ticket",
                json={"mode": "ro"},
                headers={"Cookie": f"{COOKIE}={bob_cookie}", "X-CSRF-Token": bob_csrf},
            ) as resp:
                ticket = (await resp.json())["ticket"]
            sockets["bob"] = await http.ws_connect(f"{url}&ticket={ticket}")  # as the serialmux client does
            sockets["ci"] = await http.ws_connect(url, headers={"Authorization": f"Bearer {token}"})
            async with http.post(
                f"{base}/api/v1/ports/vm1/ticket",
                json={"mode": "ro"},
                headers={"Authorization": f"Bearer {token}"},
            ) as resp:
                ci_ticket = (await resp.json())["ticket"]  # kept for after the reload
            logins = {name: await login(daemon, name.encode(), f"pw-{name}".encode()) for name in hashes}
            bob_ssh = await ssh.attach(bob_key)
            for ws in sockets.values():
                await next_event(ws, "hello")

            # bob leaves the users file, carol gets a new password, the token ci goes; alice is untouched.
            write_users(users, {"alice": (hashes["alice"], []), "carol": (hash_password("new-pw-carol"), [])})
            notices = await daemon.reload()
            assert "READY=1" in notices[-1] and daemon.events("reloaded"), daemon.log[-5:]

            bob_gone = f"user bob was removed from the users file {REMOVED}"
            carol_changed = f"the password of user carol was changed {REMOVED}"
            closing = {name: await next_event(sockets[name], "closing") for name in ("bob", "carol", "ci")}
            assert closing["bob"] == {
                "type": "closing",
                "reason": f"your sign-in ended: {bob_gone}",
                "code": 4005,
            }
            assert closing["carol"]["reason"] == f"your sign-in ended: {carol_changed}"
            assert closing["ci"]["reason"] == f"token ci was removed from the users file {REMOVED}"
            await logins["bob"].expect(f"disconnected: {bob_gone}".encode())
            await logins["bob"].wait_eof()
            await logins["carol"].expect(f"disconnected: {carol_changed}".encode())
            await logins["carol"].wait_eof()
            await bob_ssh.expect(f"disconnected: {bob_gone}".encode())
            await eventually(lambda: bob_ssh.proc.poll() is not None, "bob's ssh ended")
            assert await status(http, base, bob_cookie) == 401
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:  # the token's ticket went with it
                await http.ws_connect(f"{url}&ticket={ci_ticket}")
            assert refused.value.status == 401
            (ticket_refused,) = audited(tmp_path, "ticket_refused")
            assert ticket_refused["user"] == "ci"
            assert ticket_refused["reason"] == "the sign-in it was issued from has ended"
            assert await status(http, base, cookies["carol"][0]) == 401

            # alice: her page session, her WebSocket and her login all carry on.
            assert await status(http, base, cookies["alice"][0]) == 200
            await guest.send(b"alice-still-here\r\n")
            await guest_bytes(sockets["alice"], b"alice-still-here")
            await logins["alice"].expect(b"alice-still-here")

            revoked = {line["user"]: line for line in audited(tmp_path, "credential_revoked")}
            assert set(revoked) == {"bob", "carol", "ci"}
            assert revoked["bob"]["change"] == "user_removed"
            assert (revoked["bob"]["web_sessions"], revoked["bob"]["console_sessions"]) == (1, 2)
            assert revoked["carol"]["change"] == "password_changed"
            assert (revoked["carol"]["web_sessions"], revoked["carol"]["console_sessions"]) == (1, 1)
            assert revoked["ci"]["change"] == "token_removed" and revoked["ci"]["console_sessions"] == 1
            ended = {line["user"]: line for line in audited(tmp_path, "session_ended")}
            assert set(ended) == {"bob", "carol"}
            assert ended["bob"]["reason"] == bob_gone and ended["bob"]["websockets"] == 1
            for ws in sockets.values():
                await ws.close()
            for client in logins.values():
                await client.close()
    finally:
        if ssh is not None:
            ssh.close()
        guest.close()


@needs_ssh
async def test_ssh_keys_follow_the_users_file_without_a_restart(tmp_path: Path) -> None:
    guest, http_port = GuestPty(), free_port()
    k1, k2, k3 = (keygen(tmp_path / f"key_{n}") for n in ("one", "two", "three"))
    users = tmp_path / "users.toml"
    write_users(users, {"dave": (None, [k1, k2]), "erin": (None, [])})
    config = write_config(tmp_path, users, guest, http_port)
    ssh: Ssh | None = None
    try:
        async with daemon_process(config, http_port) as daemon:
            ssh = Ssh(daemon, tmp_path)
            assert await ssh.refused(k3)
            by_one = await ssh.attach(k1)
            by_two = await ssh.attach(k2)

            # k1 goes, k3 comes: k1's session ends and k1 is refused at its next login, k3 works, k2's
            # session carries on.
            write_users(users, {"dave": (None, [k2, k3]), "erin": (None, [])})
            await daemon.reload()
            await by_one.expect(
                f"disconnected: an SSH key of user dave was removed from the users file {REMOVED}".encode()
            )
            await eventually(lambda: by_one.proc.poll() is not None, "k1's ssh ended")
            assert await ssh.refused(k1)
            by_three = await ssh.attach(k3)
            await guest.send(b"both-see-this\r\n")
            await by_two.expect(b"both-see-this")
            await by_three.expect(b"both-see-this")
            assert by_two.proc.poll() is None
            (key_revoked,) = audited(tmp_path, "credential_revoked")
            assert key_revoked["user"] == "dave" and key_revoked["change"] == "ssh_key_removed"
            assert key_revoked["console_sessions"] == 1
            failed = [line for line in audited(tmp_path, "login_failed") if line["method"] == "publickey"]
            assert len(failed) == 2  # k3 before it was added, k1 after it was removed

            # dave leaves: the sessions of his keys end, told why.
            write_users(users, {"erin": (None, [])})
            await daemon.reload()
            for child in (by_two, by_three):
                await child.expect(
                    f"disconnected: user dave was removed from the users file {REMOVED}".encode()
                )
                await eventually(lambda child=child: child.proc.poll() is not None, "ssh ended")  # type: ignore[misc]
            revoked = audited(tmp_path, "credential_revoked")[1:]
            assert [(r["user"], r["change"], r["console_sessions"]) for r in revoked] == [
                ("dave", "user_removed", 2)
            ]
            assert await ssh.refused(k2)
    finally:
        if ssh is not None:
            ssh.close()
        guest.close()
