"""Telnet and raw-TCP front end: one listener per port (like ser2net), one ``Session`` per connection.

The connection is an ``asyncio.Protocol`` (callback style: ~95 µs less per keystroke round trip than
streams, see STACK.md).  Bytes from the client go through the telnet codec (unless ``raw``), then the
escape-key FSM, then into the session; guest bytes from the hub are IAC-escaped by the codec and written to
the transport.  The transport's write-buffer watermarks are the session's bounded queue: above
``client_buffer_bytes`` the transport calls ``pause_writing`` and the hub stops sending live data to this
client (it resumes from the ring later), so a slow client never slows the console or anyone else.
"""

from __future__ import annotations

import asyncio
import socket
from typing import cast

import structlog

from ..adapters import Action, AdapterError
from ..config import ListenAddress
from ..core.access import Identity
from ..errors import StartupError
from ..hub import AttachMode, EndReason, Notice, NoticeKind, PortHub, Session
from ..proto import escape as esc
from ..proto import telnet as tn

log = structlog.get_logger("serialmuxd.telnet")

_VM_COMMANDS = {
    esc.Command.NMI: Action.NMI,
    esc.Command.RESET: Action.RESET,
    esc.Command.RESTART: Action.RESTART,
}
_ACTION_WORDS = {
    Action.NMI: "send an NMI to",
    Action.RESET: "hard-reset",
    Action.RESTART: "restart",
}

# How long a closing connection may take to flush before it is aborted (a client that stopped reading).
_CLOSE_FLUSH_TIMEOUT_S = 5.0
_NOTICE_PREFIX = b"\r\n[serialmuxd] "
# A connection whose unsent output exceeds this many times client_buffer_bytes is cut (it stopped reading).
_HARD_BUFFER_FACTOR = 4


def peer_text(peer: object) -> str:
    """A socket's peer address as ``host:port`` (``[v6]:port``), for messages and audit."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)


def escape_controls(text: str) -> str:
    """``text`` with every control character (C0, DEL, C1) shown as ``\\xNN``."""
    return "".join(f"\\x{ord(ch):02x}" if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 else ch for ch in text)


class TelnetConnection(asyncio.Protocol):
    """One client connection; implements ``hub.SessionSink``."""

    def __init__(self, hub: PortHub, *, raw: bool, mode: AttachMode) -> None:
        self.hub = hub
        self.raw = raw
        self.mode = mode
        self.codec: tn.TelnetCodec | None = None if raw else tn.TelnetCodec()
        self.escape = esc.EscapeParser(esc.parse_escape_key(hub.config.escape))
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self._closing = False
        self._abort_timer: asyncio.TimerHandle | None = None
        # A hypervisor action waiting for its "y" (NMI and resets are too costly for one stray keystroke).
        self._confirming: Action | None = None
        self._paused = False  # the transport's buffer is above its high-water mark
        self._written_while_paused = 0
        self._actions: set[asyncio.Task[None]] = set()

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        limit = self.hub.config.client_buffer_bytes
        self.transport.set_write_buffer_limits(high=limit, low=limit // 4)
        if self.codec is not None:
            self.codec.start()
            self._flush_codec()
        identity = Identity("raw" if self.raw else "telnet", peer_text(transport.get_extra_info("peername")))
        self.hub.attach(self, identity, self.mode)  # calls session_started, or closes us with a reason

    def data_received(self, data: bytes) -> None:
        if self._closing or self.session is None:
            return
        if self.codec is None:
            self._keyboard(data)
            return
        try:
            self.codec.receive_data(data)
        except tn.TelnetProtocolError as exc:
            self._flush_codec()
            self._protocol_error(str(exc))
            return
        self._flush_codec()
        for event in self.codec.events_received():
            if self.session is None or self._closing:
                return
            if isinstance(event, tn.DataReceived):
                self._keyboard(event.data)
            elif isinstance(event, tn.BreakReceived):
                self.session.send_break()
            elif isinstance(event, tn.InterruptReceived):
                self.session.input(b"\x03")
            elif isinstance(event, tn.WindowSizeChanged):
                self.session.window_size_changed(event.cols, event.rows)

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        # A started hypervisor action is not cancelled: half an IPMI exchange is worse than a finished one.
        self._closing = True
        if self.session is not None:
            self.session.detach()

    def pause_writing(self) -> None:
        self._written_while_paused = 0
        self._paused = True
        if self.session is not None:
            self.session.pause_output()

    def resume_writing(self) -> None:
        self._paused = False
        if self.session is not None and not self._closing:
            self.session.resume_output()

    # -- SessionSink ------------------------------------------------------------------------------
    def session_started(self, session: Session) -> None:
        self.session = session

    def send_output(self, data: bytes) -> None:
        if self.transport is None or self._closing:
            return
        self.transport.write(data if self.codec is None else self.codec.encode(data))

    def send_notice(self, notice: Notice) -> None:
        self._write_line(notice.text)

    def close_session(self, reason: str, kind: EndReason = EndReason.PROTOCOL) -> None:
        if self._closing:
            return
        self._write_line(f"disconnected: {reason}")
        self._close()

    def pause_input(self) -> None:
        if self.transport is not None and not self._closing:
            self.transport.pause_reading()

    def resume_input(self) -> None:
        if self.transport is not None and not self._closing:
            self.transport.resume_reading()

    # -- internals --------------------------------------------------------------------------------
    def _keyboard(self, data: bytes) -> None:
        session = self.session
        if session is None:
            return
        for event in self.escape.feed(data):
            if self._closing:
                return
            if isinstance(event, esc.PassThrough):
                payload = event.data
                if self._confirming is not None:
                    # The first key after a hypervisor prompt answers it, even within the same chunk.
                    self._answer_confirmation(session, payload[:1])
                    payload = payload[1:]
                if payload:
                    session.input(payload)
            elif isinstance(event, esc.EscapeCommand):
                self._confirming = None
                self._command(session, event.command)
            else:
                self._write_text(self._help())

    def _answer_confirmation(self, session: Session, key: bytes) -> None:
        assert self._confirming is not None
        action, self._confirming = self._confirming, None
        if key in (b"y", b"Y") and not self.hub.lease.holds(session.id):
            self._write_line(f"{action} not done: you no longer have write access")
        elif key in (b"y", b"Y"):
            self._start_action(session, action)
        else:
            self._write_line(f"{action} cancelled")

    def _command(self, session: Session, command: esc.Command) -> None:
        if command is esc.Command.DETACH:
            self._write_line("detached")
            session.detach()
            self._close()
        elif command is esc.Command.TAKE_OVER:
            if self.mode is AttachMode.VIEWER:
                self._write_line("this listener is read-only; connect to the interactive one to write")
            else:
                session.take_over()
        elif command is esc.Command.READ_ONLY:
            session.become_viewer()
        elif command is esc.Command.REPLAY:
            session.replay()
        elif command is esc.Command.BREAK:
            session.send_break()
        elif command is esc.Command.WHO:
            session.who()
        elif command in _VM_COMMANDS:
            self._ask_confirmation(session, _VM_COMMANDS[command])
        else:
            self._write_text(self._help())

    def _ask_confirmation(self, session: Session, action: Action) -> None:
        adapter = self.hub.adapter
        if adapter is None or action not in adapter.actions:
            self._write_line(f"{action}: no hypervisor action configured for console {self.hub.name}")
            return
        if self.mode is AttachMode.VIEWER or not self.hub.lease.holds(session.id):
            self._write_line(f"{action}: only the session with write access may do this")
            return
        self._confirming = action
        self._write_line(
            f"{_ACTION_WORDS[action]} {self.hub.name}? press y to confirm, any other key cancels"
        )

    def _start_action(self, session: Session, action: Action) -> None:
        async def run() -> None:
            try:
                await self.hub.vm_action(action, session.identity)
            except AdapterError as exc:
                log.warning("vm_action_failed", port=self.hub.name, action=str(action), error=str(exc))
                # The detail names sockets and hosts: it goes to the operator's log, the client gets the kind.
                self._write_line(f"{action} failed: {exc.kind} (details in the serialmuxd log)")

        task = asyncio.get_running_loop().create_task(run())
        self._actions.add(task)
        task.add_done_callback(self._actions.discard)

    def _help(self) -> str:
        prefix = esc.parse_escape_key(self.hub.config.escape)
        return esc.help_text(prefix) if prefix is not None else ""

    def _write_line(self, text: str) -> None:
        # Notices may quote text from elsewhere (a disable reason sent to the API): control characters are
        # shown escaped so that nobody can send escape sequences into other people's terminals.
        self._write_raw(_NOTICE_PREFIX + escape_controls(text).encode("utf-8", "replace") + b"\r\n")

    def _write_text(self, text: str) -> None:
        self._write_raw(b"\r\n" + text.encode("utf-8", "replace"))

    def _write_raw(self, payload: bytes) -> None:
        if self.transport is None or self._closing:
            return
        data = payload if self.codec is None else self.codec.encode(payload)
        self.transport.write(data)
        # Notices bypass the output pause (guest output does not: the hub stops sending it).  A client that
        # reads nothing at all must not make them pile up: count what is written while paused.
        if not self._paused:
            return
        self._written_while_paused += len(data)
        if self._written_while_paused > _HARD_BUFFER_FACTOR * self.hub.config.client_buffer_bytes:
            log.info("client_not_reading", port=self.hub.name, session=self.session and self.session.id)
            self._closing = True
            if self.session is not None:
                self.session.detach()
            self.transport.abort()

    def _flush_codec(self) -> None:
        assert self.codec is not None
        out = self.codec.data_to_send()
        if out and self.transport is not None and not self._closing:
            self.transport.write(out)

    def _protocol_error(self, reason: str) -> None:
        log.info("telnet_protocol_error", port=self.hub.name, reason=reason)
        if self.session is not None:
            self.session.detach()
        self.close_session(f"protocol error: {reason}")

    def _close(self) -> None:
        if self._closing or self.transport is None:
            return
        self._closing = True
        self.transport.close()  # flushes what is buffered ...
        # ... unless the client stopped reading: then give up after a deadline.
        loop = asyncio.get_running_loop()
        self._abort_timer = loop.call_later(_CLOSE_FLUSH_TIMEOUT_S, self._abort)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def start_listener(
    hub: PortHub, address: ListenAddress, *, raw: bool, mode: AttachMode
) -> asyncio.Server:
    """Listen for one port's clients; a busy or unusable address raises ``StartupError`` naming it."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.create_server(
            lambda: TelnetConnection(hub, raw=raw, mode=mode),
            host=address.host,
            port=address.port,
            reuse_address=True,
            backlog=128,
        )
    except OSError as exc:
        kind = "read-only listener" if mode is AttachMode.VIEWER else "listener"
        raise StartupError(
            f"cannot listen on {address} ({kind} of port {hub.name}): {exc.strerror or exc}"
        ) from exc


__all__ = ["NoticeKind", "TelnetConnection", "start_listener"]
