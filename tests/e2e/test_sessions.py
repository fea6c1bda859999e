"""Sessions through the real front ends: the hub decides every verb whichever transport a request came from,
takeover policy ``ask`` end to end, and ``notices = "none"`` raw ports that carry only guest bytes.

Real PTY guests, real sockets (raw TCP, telnet listeners, aiohttp WebSockets) against a daemon on this loop;
a ``command`` hypervisor whose program records each call in a file shows that refused actions never ran.
"""

from __future__ import annotations

import sys
from pathlib import Path

import aiohttp
import pytest

from serialmuxd.daemon import Daemon

from .support import GuestPty, TcpClient, running_daemon
from .test_http import WsClient, base_url

pytestmark = pytest.mark.asyncio

CTRL_E = b"\x05"
IAC_BRK = b"\xff\xf3"
RECORD = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10))"


def _config(
    guest: GuestPty, port_extra: str = "", record: Path | None = None, raw: bool = True, replay_bytes: int = 0
) -> str:
    hypervisor = ""
    if record is not None:

        def argv(action: str) -> str:
            return f'["{sys.executable}", "-c", "{RECORD}", "{record}", "{action}"]'

        hypervisor = f"""
[ports.hypervisor]
type = "command"
nmi = {argv("nmi")}
reset = {argv("reset")}
restart = {argv("restart")}
"""
    return f"""
[daemon]
log_level = "warning"

[http]
listen = "127.0.0.1:0"

[[ports]]
name = "vm1"
device = "tty:{guest.path}"
telnet = "127.0.0.1:0"
telnet_readonly = "127.0.0.1:0"
raw = {"true" if raw else "false"}
replay_bytes = {replay_bytes}
{port_extra}
{hypervisor}
"""


async def _ws(http: aiohttp.ClientSession, daemon: Daemon, query: str) -> WsClient:
    return WsClient(await http.ws_connect(f"{base_url(daemon)}/api/v1/ports/vm1/ws?{query}"))


async def _marker(writer: TcpClient, guest: GuestPty, text: bytes) -> None:
    """Type ``text`` as the writer and wait until the guest has it: everything sent before it through the
    same daemon loop has been handled by then."""
    await writer.send(text)
    await guest.expect(text)


async def test_read_only_sessions_are_refused_by_the_hub_on_every_transport(tmp_path: Path) -> None:
    guest = GuestPty()
    record = tmp_path / "actions"
    async with (
        running_daemon(
            _config(guest, record=record, raw=False), online=("vm1",), cleanup=guest.close
        ) as daemon,
        aiohttp.ClientSession() as http,
    ):
        writer = await TcpClient.connect("127.0.0.1", daemon.listener("vm1", "telnet").tcp_port)
        await writer.expect(b"you have write access")

        # telnet, read-only listener: typing, telnet BREAK, escape commands for BREAK, take-over and NMI.
        viewer = await TcpClient.connect("127.0.0.1", daemon.listener("vm1", "telnet-readonly").tcp_port)
        await viewer.expect(b"read-only: your input is not sent")
        await viewer.send(b"RO-TELNET\r")
        await viewer.send(IAC_BRK)
        await viewer.send(CTRL_E + b"cb")
        await viewer.expect(b"this session is read-only: it may not send BREAK")
        await viewer.send(CTRL_E + b"cf")
        await viewer.expect(b"this session is read-only: it may not type into this console")
        await viewer.send(CTRL_E + b"cn")
        await viewer.expect(b"this session is read-only: it may not send an NMI")

        # WebSocket, mode=ro: binary input, named keys, BREAK, SysRq, take over.
        ws = await _ws(http, daemon, "mode=ro")
        await ws.wait_kind("read_only")
        await ws.ws.send_bytes(b"RO-WS\r")
        await ws.ws.send_json({"type": "key", "key": "F8"})
        await ws.ws.send_json({"type": "break"})
        await ws.ws.send_json({"type": "sysrq", "key": "s"})
        await ws.ws.send_json({"type": "take_over"})
        await ws.wait_for(lambda: sum(e.get("kind") == "refused" for e in ws.events) >= 3, "three refusals")
        texts = [e["text"] for e in ws.events if e.get("kind") == "refused"]
        assert any("may not send BREAK" in t for t in texts)
        assert any("may not type into this console" in t for t in texts)

        # The writer still holds the lease and is the only one whose bytes arrive.
        await _marker(writer, guest, b"WRITER-MARK")
        assert b"RO-" not in guest.buffer and b"\x1b[19~" not in guest.buffer and b"s" not in guest.buffer
        status = daemon.hubs["vm1"].status()
        assert status.writer is not None and status.writer.who.startswith("telnet")
        assert not record.exists()  # the NMI command never ran
        await ws.ws.close()
        for client in (writer, viewer):
            await client.close()


async def test_writer_may_nmi_through_the_same_hub_check(tmp_path: Path) -> None:
    """The allowed path of the previous test: the writer's escape NMI, confirmed, runs the command."""
    guest = GuestPty()
    record = tmp_path / "actions"
    async with running_daemon(_config(guest, record=record), online=("vm1",), cleanup=guest.close) as daemon:
        writer = await TcpClient.connect("127.0.0.1", daemon.listener("vm1", "raw").tcp_port)
        await writer.expect(b"you have write access")
        await writer.send(CTRL_E + b"cn")
        await writer.expect(b"press y to confirm")
        await writer.send(b"y")
        await writer.expect(b"NMI sent by raw 127.0.0.1")
        assert record.read_text() == "nmi\n"
        await writer.close()


async def test_ask_policy_over_telnet_and_websocket() -> None:
    guest = GuestPty()
    config = _config(guest, 'takeover = "ask"\nask_timeout_s = 30')
    async with (
        running_daemon(config, online=("vm1",), cleanup=guest.close) as daemon,
        aiohttp.ClientSession() as http,
    ):
        first = await TcpClient.connect("127.0.0.1", daemon.listener("vm1", "raw").tcp_port)
        await first.expect(b"you have write access")
        ws = await _ws(http, daemon, "mode=rw")
        waiting = await ws.wait_kind("waiting")
        assert waiting["timeout_s"] == 30
        await first.expect(b"asks for write access to vm1; if you hand over you stay attached read-only")
        await first.expect(b"press y to hand over now, n to keep writing")

        # The writer says no: it keeps writing, the browser is told.
        mark = len(first.buffer)
        await first.send(b"n")
        await ws.wait_kind("refused")
        await first.expect(b"you keep write access", start=mark)
        await _marker(first, guest, b"still-mine\r")
        assert b"n" not in guest.buffer.replace(b"still-mine", b"")  # the answer was not typed

        # Asked again, the writer says yes: the browser writes, the writer watches (not detached).
        await ws.ws.send_json({"type": "take_over"})
        await first.expect(b"press y to hand over now", start=mark)
        await first.send(b"y")
        await ws.wait_kind("took_over")
        await first.expect(b"handed over to ws 127.0.0.1")
        await ws.ws.send_bytes(b"from-browser\r")
        await guest.expect(b"from-browser\r")
        await first.send(b"late-telnet\r")

        # Now the browser is asked, and answers over the WebSocket.
        await first.send(CTRL_E + b"cf")
        asked = await ws.wait_kind("asked")
        assert "raw 127.0.0.1" in asked["by"]
        await ws.ws.send_json({"type": "answer_takeover", "accept": True})
        await ws.wait_kind("demoted")
        await first.expect(b"you took over write access from ws 127.0.0.1")
        await _marker(first, guest, b"back-to-telnet\r")
        assert b"late-telnet" not in guest.buffer
        await ws.ws.close()
        await first.close()


async def test_raw_port_with_notices_none_carries_only_guest_bytes() -> None:
    """A program reading a raw port (a binary protocol, a log collector) gets the guest's bytes and nothing
    else: no attach, replay, write-access or takeover lines; the escape key is off by default."""
    guest = GuestPty()
    config = _config(guest, 'notices = "none"', replay_bytes=64)
    async with running_daemon(config, online=("vm1",), cleanup=guest.close) as daemon:
        payload = bytes(range(256))
        await guest.send(payload)
        await _wait_ring(daemon, len(payload))
        reader = await TcpClient.connect("127.0.0.1", daemon.listener("vm1", "raw-readonly").tcp_port)
        writer = await TcpClient.connect("127.0.0.1", daemon.listener("vm1", "raw").tcp_port)
        # Ctrl-E c f is data here (escape off under notices = none): it reaches the guest unchanged.
        await writer.send(CTRL_E + b"cf\x00\xff")
        await guest.expect(CTRL_E + b"cf\x00\xff")
        second = await TcpClient.connect("127.0.0.1", daemon.listener("vm1", "raw").tcp_port)  # evicts
        await writer.wait_eof()
        await guest.send(b"tail")
        replay = payload[-64:]
        await reader.wait_bytes(len(replay) + 4)
        await second.wait_bytes(len(replay) + 4)
        assert bytes(reader.buffer) == replay + b"tail"
        assert bytes(second.buffer) == replay + b"tail"
        assert bytes(writer.buffer) == replay  # evicted without a word: its stream is guest bytes only
        for client in (reader, second, writer):
            await client.close()


async def _wait_ring(daemon: Daemon, n: int) -> None:
    from .support import eventually

    await eventually(lambda: daemon.hubs["vm1"].stream_end >= n, f"{n} guest bytes in the ring")


async def test_an_idle_writer_is_demoted_and_the_guest_gets_the_logout_sequence() -> None:
    guest = GuestPty()
    config = _config(guest, 'writer_idle_timeout_s = 2\nlogout_sequence = "exit\\r"')
    async with running_daemon(config, online=("vm1",), cleanup=guest.close) as daemon:
        writer = await TcpClient.connect("127.0.0.1", daemon.listener("vm1", "raw").tcp_port)
        await writer.expect(b"you have write access")
        await writer.expect(b"no input for 2 s: you are now read-only (Ctrl-E c f takes over)\r\n")
        await guest.expect(b"exit\r")  # the next person does not inherit a logged-in shell
        await writer.send(b"ignored\r")
        await writer.send(CTRL_E + b"cf")  # taking write access back works
        await writer.expect(b"you have write access", start=writer.buffer.find(b"no input"))
        await _marker(writer, guest, b"mine-again\r")
        assert b"ignored" not in guest.buffer
        await writer.close()
        await guest.expect(b"mine-again\rexit\r")  # and again when the writer leaves
