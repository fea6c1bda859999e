"""Every audit event the daemon's consoles, switches, devices and logins produce, each asserted once with its
fields, from a real daemon writing a real audit file (telnet sessions, API calls, a command hypervisor, an
exec device that exits).  The HTTP front end's own events (tickets, page sessions, refused origins and
hosts, WebSocket protocol closes) are asserted where they are produced (test_tickets.py and its peers); the
set below must cover everything else in AuditEvent, so a new event cannot go unasserted."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from serialmuxd.auth.passwords import hash_password
from serialmuxd.auth.tokens import new_token, token_digest
from serialmuxd.obs.audit import AuditEvent

from .support import GuestPty, TcpClient, eventually, running_daemon

pytestmark = pytest.mark.asyncio

# Asserted elsewhere: produced by the page/ticket/WebSocket parts of the HTTP front end, or by AuditLog
# itself during a write outage (tests/unit/test_audit.py), or never by a console (vm_state needs a poll).
ELSEWHERE = {
    AuditEvent.LOGOUT,
    AuditEvent.SESSION_EXPIRED,
    AuditEvent.TICKET_ISSUED,
    AuditEvent.TICKET_USED,
    AuditEvent.TICKET_REFUSED,
    AuditEvent.ORIGIN_REFUSED,
    AuditEvent.HOST_REFUSED,
    AuditEvent.WS_PROTOCOL_CLOSE,
    AuditEvent.HEARTBEAT_CUT,
    AuditEvent.SCROLLBACK_DOWNLOAD,
    AuditEvent.AUDIT_LOST,
    AuditEvent.READER_MISSED,  # hub-level: tests/unit/test_hub.py drives a slow reader
    AuditEvent.VM_STATE,  # adapters' state polls: tests/e2e/test_adapters.py
    AuditEvent.BREAK,  # a PTY cannot BREAK; tests/e2e/test_devices.py covers real UART paths
    AuditEvent.WRITER_IDLE,  # idle timeout and logout sequence: tests/e2e/test_sessions.py, test_hub.py
    AuditEvent.LOGOUT_SENT,
    AuditEvent.GUEST_HEALTH,  # a guest's panic, oops...: tests/e2e/test_health.py
    AuditEvent.CONFIG_RELOAD,  # SIGHUP applied or rejected: tests/e2e/test_reload.py
    AuditEvent.SESSION_ENDED,  # sign-out, expiry, reload: tests/e2e/test_signout.py, test_reload_signins.py
    AuditEvent.CREDENTIAL_REVOKED,  # a reload withdrew a user, password or token: test_reload_signins.py
}
RECORD = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10))"
WHO = {"user", "source", "transport"}


async def test_every_event_once_with_its_fields(tmp_path: Path) -> None:
    guest = GuestPty()
    token = new_token()
    users = tmp_path / "users.toml"
    users.write_text(
        f'[[users]]\nname = "alice"\npassword_hash = "{hash_password("pw-alice")}"\n'
        'grants = [{ role = "operator", ports = ["vm*", "flaky"] }]\n'
        f'[[tokens]]\nname = "root"\nsha256 = "{token_digest(token)}"\n'
        'grants = [{ role = "admin", ports = ["*"] }]\n'
    )
    users.chmod(0o600)
    audit = tmp_path / "audit.jsonl"
    record = tmp_path / "actions"
    nmi = f'["{sys.executable}", "-c", "{RECORD}", "{record}", "nmi"]'
    config = f"""
[daemon]
log_level = "warning"
allow_remote_unauthenticated = true
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
max_sessions = 2
[ports.hypervisor]
type = "command"
nmi = {nmi}
[[ports]]
name = "vm2"
device = "exec:/bin/cat"
telnet = "127.0.0.1:0"
raw = true
takeover = "ask"
[[ports]]
name = "vm3"
device = "exec:/bin/cat"
telnet = "127.0.0.1:0"
raw = true
takeover = "refuse"
[[ports]]
name = "secret"
device = "exec:/bin/cat"
telnet = "0.0.0.0:0"
raw = true
[[ports]]
name = "flaky"
device = "exec:/bin/sh -c 'read line; exit 3'"
telnet = "127.0.0.1:0"
raw = true
"""

    async def login(port: str, user: bytes = b"alice", password: bytes = b"pw-alice") -> TcpClient:
        client = await TcpClient.connect("127.0.0.1", daemon.listener(port, "raw").tcp_port)
        await client.expect(b"login: ")
        await client.send(user + b"\n" + password + b"\n")
        return client

    async with running_daemon(config, online=("vm1", "vm2", "vm3", "flaky"), cleanup=guest.close) as daemon:
        clients = []
        bad = await login("vm1", password=b"wrong")  # login_failed
        await bad.expect(b"Login incorrect")
        first = await login("vm1")  # login_ok, attach, write_granted
        await first.expect(b"you have write access")
        second = await login("vm1")  # takeover (evict), detach of the first, write_granted
        await second.expect(b"you took over")
        await first.wait_eof()
        await second.send(b"\x05cr")  # write_released
        await second.expect(b"you are now read-only")
        await second.send(b"\x05cn")  # access_denied: not the writer
        await second.expect(b"only the session with write access")
        third = await login("vm1")  # the second session (max_sessions = 2): it gets the free lease
        await third.expect(b"you have write access")
        fourth = await login("vm1")  # attach_refused: over max_sessions
        await fourth.expect(b"maximum of 2 sessions")
        await third.send(b"\x05cn")
        await third.expect(b"press y to confirm")
        await third.send(b"y")  # vm_action
        await third.expect(b"NMI sent by alice")
        clients += [bad, first, second, third, fourth]

        ask_a, ask_b = await login("vm2"), await login("vm2")  # takeover_asked
        await ask_b.expect(b"asked them to hand over")
        refuse_a, refuse_b = await login("vm3"), await login("vm3")  # takeover_refused
        await refuse_b.expect(b"takeover policy: refuse")
        denied = await login("secret")  # attach_denied: alice has no grant on it
        await denied.expect(b"access to console secret denied")
        flaky = await login("flaky")  # device_offline when the program exits, device_online again
        await flaky.expect(b"you have write access")
        await flaky.send(b"bye\n")
        await flaky.expect(b"offline")
        await flaky.expect(b"online")
        clients += [ask_a, ask_b, refuse_a, refuse_b, denied, flaky]

        await third.close()
        await eventually(lambda: daemon.hubs["vm1"].status().writer is None, "vm1 free")
        assert daemon.http_address is not None
        base = "http://{}:{}".format(*daemon.http_address)
        root = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/api/v1/ports/vm1/keys", json={"keys": ["F1"]}, headers=root) as r:
                assert r.status == 200  # api_input
            async with http.post(f"{base}/api/v1/ports/vm2/disable", json={"reason": "t"}, headers=root) as r:
                assert r.status == 200  # port_switch, port_disabled
            async with http.post(f"{base}/api/v1/ports/vm2/enable", headers=root) as r:
                assert r.status == 200  # port_switch, port_enabled
            async with http.post(f"{base}/api/v1/console", json={"enabled": True}, headers=root) as r:
                assert r.status == 200  # console_switch
        for client in clients:
            await client.close()

    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    by_event: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        assert line["time"].endswith("Z")
        by_event.setdefault(line["event"], []).append(line)
    missing = {str(e) for e in AuditEvent} - set(by_event) - {str(e) for e in ELSEWHERE}
    assert not missing, f"not produced here (assert them, or say where they are): {sorted(missing)}"

    def one(event: str, **expected: object) -> dict[str, Any]:
        for line in by_event[event]:
            if all(line.get(key) == value for key, value in expected.items()):
                return line
        raise AssertionError(f"no {event} with {expected}: {by_event[event]}")

    assert one("login_ok", method="password", user="alice", result="ok").keys() >= WHO
    assert one("login_failed", user="alice", result="failed")["reason"] == "bad credentials"
    assert {"session", "mode", "port"} | WHO <= one("attach", port="vm1", user="alice").keys()
    assert "missed" in one("detach", port="vm1")
    assert {"session"} | WHO <= one("write_granted", port="vm1").keys()
    assert one("takeover", port="vm1", action="evict")["displaced"].startswith("alice")
    assert "session" in one("write_released", port="vm1")
    assert one("access_denied", port="vm1", verb="nmi", result="denied")["user"] == "alice"
    assert "maximum of 2 sessions" in one("attach_refused", port="vm1")["reason"]
    assert one("attach_denied", port="secret")["user"] == "alice"
    assert one("takeover_asked", port="vm2")["holder"].startswith("alice")
    assert one("takeover_refused", port="vm3")["holder"].startswith("alice")
    assert one("vm_action", port="vm1", action="nmi", result="ok")["user"] == "alice"
    assert one("api_input", port="vm1", user="root")["bytes"] > 0
    assert one("port_switch", port="vm2", enabled=False)["user"] == "root"
    assert one("port_disabled", port="vm2")["reason"]
    assert one("port_enabled", port="vm2")
    assert one("console_switch", enabled=True)["user"] == "root"
    assert one("device_offline", port="flaky")["reason"]
    assert one("device_online", port="flaky")["device"]
    assert "addresses" in one("config_problem", result="accepted by override")
    assert record.read_text() == "nmi\n"
