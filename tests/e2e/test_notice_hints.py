"""Notices that suggest an action (a viewer of a read-write session can take over) are worded by the hub
without saying how; each front end says it for its own users: telnet with the port's escape keys (whatever
they are, and nothing when they are off), WebSocket as the event's ``hint`` field and no telnet words.

Through real telnet connections and real WebSockets on a real daemon; the idle-writer timeout makes the
hub send both hinted notices ("you are now read-only", then "input not sent" when the viewer types).
SSH, serialmux and the console page are checked in their own suites (test_ssh, test_client,
test_browser)."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest

from serialmuxd.daemon import Daemon

from .reload_support import daemon_process
from .support import TcpClient, running_daemon
from .test_http import WsClient

pytestmark = pytest.mark.asyncio

IDLE = b"no input for 1 s: you are now read-only"
NOT_SENT = b"read-only: input not sent"


def _port(name: str, escape: str | None) -> str:
    setting = "" if escape is None else f"escape = {escape!r}\n".replace("'", '"')
    return f"""
[[ports]]
name = "{name}"
device = "exec:/bin/cat"
telnet = "127.0.0.1:0"
telnet_readonly = "127.0.0.1:0"
writer_idle_timeout_s = 1
{setting}"""


CONFIG = (
    '[http]\nlisten = "127.0.0.1:0"\n'
    + _port("std", None)  # the default escape key, Ctrl-E
    + _port("alt", "^]")
    + _port("off", "")  # no escape keys: there is nothing to type, so nothing is suggested
)


async def _telnet(daemon: Daemon, name: str, listener: str = "telnet") -> TcpClient:
    return await TcpClient.connect("127.0.0.1", daemon.listener(name, listener).tcp_port)


async def _idle_then_type(client: TcpClient, hint: bytes) -> None:
    """The writer goes idle (demoted with a hint), then types: told once more, with the same hint."""
    await client.expect(b"you have write access")
    await client.expect(IDLE + hint + b"\r\n")
    mark = len(client.buffer)
    await client.send(b"typed while idle\r")
    await client.expect(NOT_SENT + hint + b"\r\n", start=mark)


async def test_telnet_names_the_ports_own_escape_keys_or_nothing() -> None:
    async with running_daemon(CONFIG, online=("std", "alt", "off")) as daemon:
        std, alt, off = [await _telnet(daemon, name) for name in ("std", "alt", "off")]
        await _idle_then_type(std, b" (Ctrl-E c f takes over)")
        await _idle_then_type(alt, b" (Ctrl-] c f takes over)")
        await _idle_then_type(off, b"")
        # The hinted keys do what the hint says (on the port whose escape key is not the default).
        mark = len(alt.buffer)
        await alt.send(b"\x1dcf")
        await alt.expect(b"you have write access", start=mark)
        # A read-only listener cannot take over: no hint at all.
        viewer = await _telnet(daemon, "std", "telnet-readonly")
        await viewer.expect(b"attached")
        mark = len(viewer.buffer)
        await viewer.send(b"typed by a viewer\r")
        await viewer.expect(NOT_SENT + b"\r\n", start=mark)
        for client in (std, alt, off, viewer):
            await client.close()


async def test_websocket_gets_the_hint_as_a_field_and_no_telnet_words() -> None:
    async with running_daemon(CONFIG, online=("std",)) as daemon, aiohttp.ClientSession() as http:
        assert daemon.http_address is not None
        host, port = daemon.http_address
        ws = WsClient(await http.ws_connect(f"http://{host}:{port}/api/v1/ports/std/ws?mode=rw"))
        await ws.wait_kind("write_granted")
        idle = await ws.wait_kind("read_only")
        assert idle["text"] == IDLE.decode() and idle["hint"] == "take_over"
        await ws.ws.send_bytes(b"typed while idle\r")
        await ws.wait_for(lambda: sum(e.get("kind") == "read_only" for e in ws.events) == 2, "input not sent")
        not_sent = [e for e in ws.events if e.get("kind") == "read_only"][-1]
        assert not_sent["text"] == NOT_SENT.decode() and not_sent["hint"] == "take_over"
        # Nothing in any event is worded for telnet, and only the hinted notices carry a hint.
        texts = [str(e.get("text", "")) for e in ws.events]
        assert not any("Ctrl-" in text or "escape" in text for text in texts), texts
        assert [e["kind"] for e in ws.events if "hint" in e] == ["read_only", "read_only"]
        # Doing what the hint says: take_over gives write access back.
        await ws.ws.send_json({"type": "take_over"})
        await ws.wait_for(lambda: ws.kinds().count("write_granted") == 2, "write access again")
        await ws.ws.close()


def _reloadable(tmp: Path, escape: str) -> str:
    return f"""
[daemon]
state_dir = "{tmp / "state"}"
log_format = "json"

[[ports]]
name = "vm"
device = "exec:/bin/cat"
telnet = "127.0.0.1:0"
escape = "{escape}"
"""


async def _read_only_then_type(client: TcpClient, prefix: bytes) -> bytes:
    """Become read-only with the escape keys, type, and return the notice's hint."""
    mark = len(client.buffer)
    await client.send(prefix + b"cr")
    await client.expect(b"you are now read-only", start=mark)
    mark = len(client.buffer)
    await client.send(b"typed while read-only\r")
    found = await client.expect(re.compile(NOT_SENT + rb"( \(.*\))?\r\n"), start=mark)
    return bytes(found.group(1) or b"")


async def test_after_a_reload_each_session_is_told_the_keys_it_has(tmp_path: Path) -> None:
    """``escape`` applies to sessions that attach after a reload; a session attached before keeps its
    keys, and the hint (and help) name those, not the port's new ones."""
    config = tmp_path / "serialmuxd.toml"
    config.write_text(_reloadable(tmp_path, "^E"))
    async with daemon_process(config) as daemon:
        before = await daemon.connect("vm", "telnet")
        await before.expect(b"you have write access")
        config.write_text(_reloadable(tmp_path, "^]"))
        await daemon.reload()
        assert await _read_only_then_type(before, b"\x05") == b" (Ctrl-E c f takes over)"
        after = await daemon.connect("vm", "telnet")
        await after.expect(b"you have write access")
        assert await _read_only_then_type(after, b"\x1d") == b" (Ctrl-] c f takes over)"
        mark = len(before.buffer)
        await before.send(b"\x05c?")  # the help agrees
        await before.expect(b"Ctrl-E c f  take over writing (force)", start=mark)
        await before.send(b"\x05cf")  # and the keys named work
        await before.expect(b"you have write access", start=mark)
        for client in (before, after):
            await client.close()
