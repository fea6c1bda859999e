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
import functools
import socket
import ssl
from typing import Final, cast

import structlog

from ..auth.authenticator import certificate_names
from ..auth.setup import FrontDoor
from ..config import ListenAddress
from ..control import Console
from ..core.access import AttachMode, Identity
from ..core.policy import NoticePolicy
from ..errors import StartupError
from ..hub import EndReason, Hint, Notice, NoticeKind, Session, notice_line
from ..proto import escape as esc
from ..proto import telnet as tn
from .keyboard import InBandKeys
from .output import CLOSE_FLUSH_TIMEOUT_S, OutputBudget
from .telnet_login import TelnetLogin

log = structlog.get_logger("serialmuxd.telnet")

_NOTICE_PREFIX = b"\r\n[serialmuxd] "

# The escape command that does what a notice's hint suggests (the hub's notices say what, never how).
_HINT_COMMANDS: Final = {Hint.TAKE_OVER: esc.Command.TAKE_OVER}


def peer_text(peer: object) -> str:
    """A socket's peer address as ``host:port`` (``[v6]:port``), for messages and audit."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)


def escape_hint(prefix: int | None, hint: Hint) -> str | None:
    """The keys that do what ``hint`` suggests with the session's escape ``prefix`` ("Ctrl-E c f"); None
    when escape keys are off."""
    return None if prefix is None else esc.command_keys(prefix, _HINT_COMMANDS[hint])


def escape_controls(text: str) -> str:
    """``text`` with every control character (C0, DEL, C1) shown as ``\\xNN``."""
    return "".join(f"\\x{ord(ch):02x}" if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 else ch for ch in text)


class TelnetConnection(asyncio.Protocol):
    """One client connection; implements ``hub.SessionSink``.

    It decides nothing about access: commands go to the ``Session``, whose hub refuses what this session may
    not do (a read-only listener's take-over, a viewer's BREAK) and says why in a notice.
    """

    def __init__(self, hub: Console, *, raw: bool, mode: AttachMode, door: FrontDoor | None = None) -> None:
        self.hub = hub
        self._door = door
        self._login: TelnetLogin | None = None
        self._pending_size: tuple[int, int] | None = None  # NAWS received before the session existed
        self.raw = raw
        self.mode = mode
        self.codec: tn.TelnetCodec | None = None if raw else tn.TelnetCodec()
        prefix = esc.parse_escape_key(hub.config.escape)
        self.keys = InBandKeys(
            esc.EscapeParser(prefix),
            hub.name,
            write_line=self._write_line,
            close=self._close,
            closing=lambda: self._closing,
        )
        self._escape_byte = None if prefix is None else bytes((prefix,))
        # notices = "none": a raw port carrying a binary protocol or feeding a log collector gets guest
        # bytes only, never serialmuxd's lines.
        self._inband = hub.config.notices is NoticePolicy.INBAND
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self._closing = False
        self._abort_timer: asyncio.TimerHandle | None = None
        # The transport's write buffer is the bounded queue; the budget bounds what bypasses the pause.
        self._budget = OutputBudget(hub.config.client_buffer_bytes)

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
        if self._door is None:
            self._attach(identity)
            return
        by_certificate = self._door.authenticator.certificate(identity, certificate_names(transport))
        if by_certificate is not None:
            self._attach(by_certificate)
            return
        self._login = TelnetLogin(
            self._door, identity, write=self._write_raw, succeeded=self._attach, failed=self._login_failed
        )
        self._login.start()

    def _attach(self, identity: Identity) -> None:
        self.hub.attach(self, identity, self.mode)  # calls session_started, or closes us with a reason
        if self.session is not None and self._pending_size is not None:
            self.session.window_size_changed(*self._pending_size)

    def _login_failed(self, reason: str) -> None:
        self.close_session(reason, EndReason.DENIED)

    def data_received(self, data: bytes) -> None:
        if self.session is not None and not self._closing:
            codec = self.codec
            if codec is None or codec.passes_through(data):
                self._keyboard(data)  # raw TCP or plain telnet BINARY data, attached: the keystroke path
                return
        if self._closing:
            return
        logging_in = self._login is not None and not self._login.done
        if self.session is None and not logging_in:
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
            if self._closing:
                return
            if self.session is None:  # at the login prompt: only typed bytes and the window size matter
                if isinstance(event, tn.DataReceived) and self._login is not None:
                    self._login.feed(event.data)
                elif isinstance(event, tn.WindowSizeChanged):
                    self._pending_size = (event.cols, event.rows)
                continue
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
        if self._login is not None:
            self._login.close()
        if self.session is not None:
            self.session.detach()

    def pause_writing(self) -> None:
        self._budget.pause()
        if self.session is not None:
            self.session.pause_output()

    def resume_writing(self) -> None:
        self._budget.resume()
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
        self._write_line(notice_line(notice, functools.partial(escape_hint, self.keys.escape.prefix)))
        if notice.kind is NoticeKind.ASKED:
            self.keys.asked = True  # the next y or n typed answers
            self._write_line("press y to hand over now, n to keep writing")

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
            if self._login is not None:
                self._login.feed(data)
            return
        # The common keystroke: no escape byte in it, no escape sequence half typed, no question waiting
        # for its answer.  Straight to the session, without the parser's event list.
        if (
            self.keys.plain
            and not self._closing
            and (self._escape_byte is None or self._escape_byte not in data)
        ):
            session.input(data)
            return
        self.keys.feed(session, data)

    def _write_line(self, text: str) -> None:
        # Notices may quote text from elsewhere (a disable reason sent to the API): control characters are
        # shown escaped so that nobody can send escape sequences into other people's terminals.
        if self._inband:
            self._write_raw(_NOTICE_PREFIX + escape_controls(text).encode("utf-8", "replace") + b"\r\n")

    def _write_raw(self, payload: bytes) -> None:
        if self.transport is None or self._closing:
            return
        data = payload if self.codec is None else self.codec.encode(payload)
        self.transport.write(data)
        # Notices bypass the output pause (guest output does not: the hub stops sending it).  A client that
        # reads nothing at all must not make them pile up: count what is written while paused.
        if self._budget.written(len(data)):
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
        self._abort_timer = loop.call_later(CLOSE_FLUSH_TIMEOUT_S, self._abort)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def start_listener(
    hub: Console,
    address: ListenAddress,
    *,
    raw: bool,
    mode: AttachMode,
    door: FrontDoor | None = None,
    tls: ssl.SSLContext | None = None,
) -> asyncio.Server:
    """Listen for one port's clients; a busy or unusable address raises ``StartupError`` naming it.

    ``door``: authenticate every connection first (``[auth]``); ``tls``: speak TLS (``telnet_tls``)."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.create_server(
            lambda: TelnetConnection(hub, raw=raw, mode=mode, door=door),
            host=address.host,
            port=address.port,
            reuse_address=True,
            backlog=128,
            ssl=tls,
            ssl_handshake_timeout=10.0 if tls is not None else None,
        )
    except OSError as exc:
        kind = "read-only listener" if mode is AttachMode.READ_ONLY else "listener"
        raise StartupError(
            f"cannot listen on {address} ({kind} of port {hub.name}): {exc.strerror or exc}"
        ) from exc


__all__ = ["NoticeKind", "TelnetConnection", "start_listener"]
