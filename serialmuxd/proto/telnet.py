"""Server-side telnet codec, sans I/O (RFC 854, 855, 856, 857, 858, 1073, 1143).

Theory of operation
===================
``TelnetCodec`` is one telnet connection seen from the server.  It never touches a socket, a clock or a
logger: the frontend feeds it what the client sent (``receive_data``), collects what that meant
(``events_received``) and writes whatever the codec wants to say to the client (``data_to_send``: option
replies, the ``AYT`` answer).  Guest output goes the other way through ``encode``.  The same bytes fed in any
chunking give the same events and the same replies; the only difference is how ``DataReceived`` is split.

Inbound parsing is a small byte-level state machine (``_ParseState``)::

    DATA ──IAC──► COMMAND ──WILL/WONT/DO/DONT──► OPTION ──option byte──► DATA
                     │ ──SB──► SUBNEGOTIATION ──IAC──► SUBNEGOTIATION_IAC ──SE──► DATA (dispatch)
                     │                ▲                    │ ──IAC──► (a data 0xFF in the payload)
                     │                └────────────────────┘ ──other──► SB dropped, "IAC other" is a command
                     └──IAC──► DATA (one data byte 0xFF);  any other byte: a command, back to DATA

The diagram is the transition table; it is written as code (``_parse``) rather than a dict because it runs
per byte.  In ``DATA`` the parser searches for the next IAC with ``bytes.find`` and hands the run before it
over as one slice, so plain data costs one scan per ``receive_data``.  Commands:

* ``IAC BRK`` → ``BreakReceived``; ``IAC IP`` → ``InterruptReceived`` (the frontend decides what they do).
* ``IAC AYT`` → the codec queues ``AYT_REPLY`` itself; no event.  At most one answer waits in
  ``data_to_send`` at a time, so an AYT flood cannot make us send 11 times what we receive.
* ``IAC NOP``, ``GA``, ``AO``, ``EC``, ``EL``, ``DM``, a stray ``SE`` and any command byte telnet does not
  define are consumed silently.  ``AO/EC/EL`` make no sense in character mode (the guest edits its own
  line); ``DM`` is the end of a Synch, whose TCP urgent part a sans-I/O codec cannot see, so data before a
  ``DM`` is delivered, not discarded.
* ``IAC SB <option> ... IAC SE``: the payload (``IAC IAC`` unescaped) is buffered up to
  ``max_subnegotiation_bytes`` and then dispatched.  Only ``NAWS`` is understood (``WindowSizeChanged``,
  only while the client's NAWS is enabled, only with exactly 4 size bytes; 0 means "unknown" per RFC 1073).
  Every other payload -- ``NEW-ENVIRON``/``ENVIRON`` (``USER=-f root``), ``LINEMODE``, ``TTYPE``,
  ``COM-PORT-OPTION`` -- is dropped unread: option payloads are data, never arguments.  A payload longer
  than the cap raises ``TelnetProtocolError`` as soon as the cap is crossed (nothing unbounded is
  buffered).  ``IAC <x>`` inside a payload, other than ``IAC IAC``/``IAC SE``, ends the broken
  subnegotiation: it is dropped and ``IAC <x>`` is handled as a command (what BSD telnetd does).  A
  subnegotiation still open when the connection ends is not an error.

Newlines (RFC 854, 856).  Binary mode is per direction:

* Client → us, while the client does not send BINARY (our ``DO BINARY`` not agreed): ``CR NUL`` → ``CR`` and
  ``CR LF`` → ``CR``, because a serial getty wants a single CR for Enter.  This works on the *data stream*:
  the CR is delivered at once, and a NUL or LF that follows it (in the same chunk, in the next chunk, or
  after an intervening command) is dropped.  While the client sends BINARY every byte passes unchanged.
* Us → client (``encode``): ``0xFF`` is doubled; while we do not send BINARY (our ``WILL BINARY`` not
  agreed) a CR not followed by LF becomes ``CR NUL``.  ``encode`` keeps no state, so a guest ``CR LF`` split
  across two chunks goes out as ``CR NUL LF``, which every client shows exactly like ``CR LF``.

What the real client does (checked with Debian's ``telnet``, i.e. inetutils-telnet 2.4-2+deb12u3, driven
through a PTY against this codec).  It accepts the whole opening offer and answers in one segment with
``DO ECHO, DO SGA, WILL SGA, DO BINARY, WILL BINARY, WILL NAWS`` and an immediate ``SB NAWS``; both
directions end up in BINARY with ECHO and SGA on (character mode).  In that mode Enter goes out as a bare
``CR`` (``abc`` Enter → ``61 62 63 0D``), ^C as a raw ``03``, a typed 0xFF as ``FF FF``, a window resize
as a new ``SB NAWS``; its ``send brk/ip/ayt`` commands send ``IAC BRK/IP/AYT``.  When the client does not
send BINARY (offer without BINARY) Enter goes out as ``CR NUL``, which the translation turns into one CR.
Either way the guest receives exactly one CR per Enter.

Option negotiation (RFC 1143 "Q method", with the queue bit).  Each option has a state per side -- "us"
(we WILL/WONT, the peer sends DO/DONT) and "him" (the peer WILL/WONT, we send DO/DONT) -- of
NO/YES/WANTNO/WANTYES plus a queue bit.  ``_Q_METHOD`` is the one transition table for both sides:
(state, queued, input) → (state, queued, reply).  It answers at most once per state change and never
answers an acknowledgement, so two conforming peers -- or a naive peer that acknowledges everything -- cannot
loop.  We agree to us: ECHO, SGA, BINARY and him: SGA, BINARY, NAWS; everything else (LINEMODE, NEW-ENVIRON,
TTYPE, COM-PORT-OPTION, client-side ECHO, ...) is refused with WONT/DONT.  Every received
DO/DONT/WILL/WONT that changes a state or makes us answer counts against ``max_negotiations_per_option`` for
that option; the next one raises ``TelnetProtocolError`` before anything is answered, which bounds a DO/DONT
flood.  TIMING-MARK (RFC 860) is exempt: it is asked for again on every use, and the refusal
(``WONT TIMING-MARK``) is its answer.

Errors.  ``TelnetProtocolError`` (a ``RemoteError``; its message may be shown to the peer) is raised for
exceeded limits only; events and replies produced before the offending byte stay available, and every later
``receive_data`` raises the same error.  Any other garbage is ignored; nothing else is ever raised.

Speed (``timeit`` on the development machine, CPython 3.11, best of 5).  Plain data without 0xFF is one
``memchr`` and one event, no copy: ~40 GiB/s in 64 KiB chunks (binary or not, when it has no CR), ~1.1 GiB/s
in 1 KiB chunks (the ~1 µs per call dominates).  Non-binary text with CR LF every 80 bytes ~750 MiB/s; data
with an escaped 0xFF every 100 bytes ~230 MiB/s.  ``encode`` of data without 0xFF/CR is a scan, no copy.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final, TypeAlias

from serialmuxd.errors import RemoteError

__all__ = [
    "AYT_REPLY",
    "BreakReceived",
    "DataReceived",
    "InterruptReceived",
    "TelnetCodec",
    "TelnetCommand",
    "TelnetEvent",
    "TelnetOption",
    "TelnetProtocolError",
    "WindowSizeChanged",
]


class TelnetProtocolError(RemoteError):
    """The client broke a telnet limit; the message is safe to show to that client."""


class TelnetCommand(enum.IntEnum):
    """Command bytes that follow IAC (RFC 854)."""

    SE = 240  # end of subnegotiation
    NOP = 241
    DM = 242  # data mark (Synch)
    BRK = 243  # break
    IP = 244  # interrupt process
    AO = 245  # abort output
    AYT = 246  # are you there
    EC = 247  # erase character
    EL = 248  # erase line
    GA = 249  # go ahead
    SB = 250  # begin subnegotiation
    WILL = 251
    WONT = 252
    DO = 253
    DONT = 254
    IAC = 255


class TelnetOption(enum.IntEnum):
    """Option codes the codec names (all others are refused without a name)."""

    BINARY = 0  # RFC 856
    ECHO = 1  # RFC 857
    SGA = 3  # suppress go ahead, RFC 858
    STATUS = 5
    TIMING_MARK = 6  # RFC 860
    TTYPE = 24  # terminal type, RFC 1091
    EOR = 25
    NAWS = 31  # negotiate about window size, RFC 1073
    TSPEED = 32
    LFLOW = 33
    LINEMODE = 34
    XDISPLOC = 35
    ENVIRON = 36
    AUTHENTICATION = 37
    ENCRYPT = 38
    NEW_ENVIRON = 39
    CHARSET = 42
    COM_PORT_OPTION = 44  # RFC 2217, not supported yet


AYT_REPLY: Final = b"\r\n[serialmuxd: yes]\r\n"
"""What the codec answers to ``IAC AYT``."""


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Bytes the client typed, unescaped and newline-translated; never empty."""

    data: bytes


@dataclass(frozen=True, slots=True)
class BreakReceived:
    """``IAC BRK``: the client asked for a serial BREAK."""


@dataclass(frozen=True, slots=True)
class InterruptReceived:
    """``IAC IP``: the client's "interrupt process" key (the frontend may map it to ^C or ignore it)."""


@dataclass(frozen=True, slots=True)
class WindowSizeChanged:
    """NAWS: the client's window is ``cols`` x ``rows`` characters (0 = unknown, RFC 1073)."""

    cols: int
    rows: int


TelnetEvent: TypeAlias = DataReceived | BreakReceived | InterruptReceived | WindowSizeChanged

# Plain ints for the parser's hot loop: comparing IntEnum members costs a lookup per byte.
_IAC: Final = int(TelnetCommand.IAC)
_IAC_BYTE: Final = bytes([_IAC])
_SE: Final = int(TelnetCommand.SE)
_SB: Final = int(TelnetCommand.SB)
_WILL: Final = int(TelnetCommand.WILL)
_WONT: Final = int(TelnetCommand.WONT)
_DO: Final = int(TelnetCommand.DO)
_DONT: Final = int(TelnetCommand.DONT)
_BRK: Final = int(TelnetCommand.BRK)
_IP: Final = int(TelnetCommand.IP)
_AYT: Final = int(TelnetCommand.AYT)
_BINARY: Final = int(TelnetOption.BINARY)
_NAWS: Final = int(TelnetOption.NAWS)
_TIMING_MARK: Final = int(TelnetOption.TIMING_MARK)

_CR_PAIR: Final = re.compile(rb"\r[\x00\n]")  # inbound CR NUL / CR LF, left to right, non-overlapping
_BARE_CR: Final = re.compile(rb"\r(?!\n)")  # outbound CR that needs a NUL after it
# The last chunk encode() saw, per BINARY state, and its wire form: sessions of one port get the same bytes
# object in turn (an identity check; the reference kept here stops the id from being reused).
_last_encoded: tuple[bytes, bool, bytes] = (b"", True, b"")

# What we agree to when the client asks (RFC 1143 "acceptable" sets).
_LOCAL_ACCEPTED: Final = frozenset({TelnetOption.ECHO, TelnetOption.SGA, TelnetOption.BINARY})
_REMOTE_ACCEPTED: Final = frozenset({TelnetOption.SGA, TelnetOption.BINARY, TelnetOption.NAWS})


class _ParseState(enum.Enum):
    DATA = enum.auto()
    COMMAND = enum.auto()  # after IAC
    OPTION = enum.auto()  # after IAC WILL/WONT/DO/DONT
    SUBNEGOTIATION = enum.auto()  # inside IAC SB ... collecting the payload
    SUBNEGOTIATION_IAC = enum.auto()  # IAC inside the payload
    FAILED = enum.auto()  # a limit was exceeded; terminal


class _Q(enum.Enum):
    """RFC 1143 option state of one side."""

    NO = enum.auto()
    YES = enum.auto()
    WANTNO = enum.auto()  # we asked for NO and wait for the answer
    WANTYES = enum.auto()  # we asked for YES and wait for the answer


class _QInput(enum.Enum):
    ENABLE_RECEIVED = enum.auto()  # WILL (him side) / DO (us side)
    DISABLE_RECEIVED = enum.auto()  # WONT / DONT
    ENABLE_REQUESTED = enum.auto()  # we decided to ask for enabling
    DISABLE_REQUESTED = enum.auto()  # we decided to ask for disabling


class _QReply(enum.Enum):
    NONE = enum.auto()
    ENABLE = enum.auto()  # DO (him side) / WILL (us side)
    DISABLE = enum.auto()  # DONT / WONT
    ACCEPT_OR_REFUSE = enum.auto()  # YES + ENABLE if the option is acceptable, else stay NO + DISABLE


_NO, _YES, _WANTNO, _WANTYES = _Q.NO, _Q.YES, _Q.WANTNO, _Q.WANTYES
_QUEUED, _EMPTY = True, False

# (state, queue bit, input) -> (state, queue bit, reply): RFC 1143 section 7, with queueing.  The queue bit
# only means something in the WANT states; (NO|YES, queued) never occurs.  Requests that RFC 1143 calls
# errors ("already enabled", "already queued") are no-ops.
_Q_METHOD: Final[dict[tuple[_Q, bool, _QInput], tuple[_Q, bool, _QReply]]] = {
    # The peer asks to enable (WILL / DO).
    (_NO, _EMPTY, _QInput.ENABLE_RECEIVED): (_NO, _EMPTY, _QReply.ACCEPT_OR_REFUSE),
    (_YES, _EMPTY, _QInput.ENABLE_RECEIVED): (_YES, _EMPTY, _QReply.NONE),
    (_WANTNO, _EMPTY, _QInput.ENABLE_RECEIVED): (_NO, _EMPTY, _QReply.NONE),  # our disable answered by enable
    (_WANTNO, _QUEUED, _QInput.ENABLE_RECEIVED): (_YES, _EMPTY, _QReply.NONE),
    (_WANTYES, _EMPTY, _QInput.ENABLE_RECEIVED): (_YES, _EMPTY, _QReply.NONE),
    (_WANTYES, _QUEUED, _QInput.ENABLE_RECEIVED): (_WANTNO, _EMPTY, _QReply.DISABLE),
    # The peer asks to disable, or refuses (WONT / DONT).
    (_NO, _EMPTY, _QInput.DISABLE_RECEIVED): (_NO, _EMPTY, _QReply.NONE),
    (_YES, _EMPTY, _QInput.DISABLE_RECEIVED): (_NO, _EMPTY, _QReply.DISABLE),
    (_WANTNO, _EMPTY, _QInput.DISABLE_RECEIVED): (_NO, _EMPTY, _QReply.NONE),
    (_WANTNO, _QUEUED, _QInput.DISABLE_RECEIVED): (_WANTYES, _EMPTY, _QReply.ENABLE),
    (_WANTYES, _EMPTY, _QInput.DISABLE_RECEIVED): (_NO, _EMPTY, _QReply.NONE),
    (_WANTYES, _QUEUED, _QInput.DISABLE_RECEIVED): (_NO, _EMPTY, _QReply.NONE),
    # We want it enabled.
    (_NO, _EMPTY, _QInput.ENABLE_REQUESTED): (_WANTYES, _EMPTY, _QReply.ENABLE),
    (_YES, _EMPTY, _QInput.ENABLE_REQUESTED): (_YES, _EMPTY, _QReply.NONE),
    (_WANTNO, _EMPTY, _QInput.ENABLE_REQUESTED): (_WANTNO, _QUEUED, _QReply.NONE),
    (_WANTNO, _QUEUED, _QInput.ENABLE_REQUESTED): (_WANTNO, _QUEUED, _QReply.NONE),
    (_WANTYES, _EMPTY, _QInput.ENABLE_REQUESTED): (_WANTYES, _EMPTY, _QReply.NONE),
    (_WANTYES, _QUEUED, _QInput.ENABLE_REQUESTED): (_WANTYES, _EMPTY, _QReply.NONE),
    # We want it disabled.
    (_NO, _EMPTY, _QInput.DISABLE_REQUESTED): (_NO, _EMPTY, _QReply.NONE),
    (_YES, _EMPTY, _QInput.DISABLE_REQUESTED): (_WANTNO, _EMPTY, _QReply.DISABLE),
    (_WANTNO, _EMPTY, _QInput.DISABLE_REQUESTED): (_WANTNO, _EMPTY, _QReply.NONE),
    (_WANTNO, _QUEUED, _QInput.DISABLE_REQUESTED): (_WANTNO, _EMPTY, _QReply.NONE),
    (_WANTYES, _EMPTY, _QInput.DISABLE_REQUESTED): (_WANTYES, _QUEUED, _QReply.NONE),
    (_WANTYES, _QUEUED, _QInput.DISABLE_REQUESTED): (_WANTYES, _QUEUED, _QReply.NONE),
}


class _Side:
    """RFC 1143 state of one side (us or him) for all 256 options."""

    __slots__ = ("accepted", "disable_verb", "enable_verb", "queued", "state")

    def __init__(self, accepted: frozenset[TelnetOption], enable_verb: int, disable_verb: int) -> None:
        self.accepted = frozenset(int(option) for option in accepted)
        self.enable_verb = enable_verb  # what we send to enable: WILL (us) / DO (him)
        self.disable_verb = disable_verb
        self.state: list[_Q] = [_NO] * 256
        self.queued: list[bool] = [_EMPTY] * 256


def _option_name(option: int) -> str:
    try:
        return TelnetOption(option).name.replace("_", "-")
    except ValueError:
        return str(option)


class TelnetCodec:
    """One server-side telnet connection.  See the module docstring for the theory of operation."""

    def __init__(
        self, *, max_subnegotiation_bytes: int = 1024, max_negotiations_per_option: int = 50
    ) -> None:
        if max_subnegotiation_bytes < 1:
            raise ValueError("max_subnegotiation_bytes must be at least 1")
        if max_negotiations_per_option < 1:
            raise ValueError("max_negotiations_per_option must be at least 1")
        self._max_subnegotiation_bytes = max_subnegotiation_bytes
        self._max_negotiations_per_option = max_negotiations_per_option
        self._us = _Side(_LOCAL_ACCEPTED, _WILL, _WONT)
        self._him = _Side(_REMOTE_ACCEPTED, _DO, _DONT)
        self._negotiations: list[int] = [0] * 256
        self._state = _ParseState.DATA
        self._verb = 0  # WILL/WONT/DO/DONT while in OPTION
        self._subnegotiation = bytearray()
        self._error = ""
        # A CR was delivered in non-binary mode; a NUL or LF right after it belongs to it and is dropped.
        self._after_cr = False
        self._data: list[bytes] = []  # data of the current receive_data not yet turned into an event
        self._events: list[TelnetEvent] = []
        self._outgoing = bytearray()
        self._ayt_reply_queued = False

    # -- public API -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Queue our opening offer: character mode (we echo, no go-aheads), binary both ways, and NAWS."""
        self._request(self._us, TelnetOption.ECHO, _QInput.ENABLE_REQUESTED)
        self._request(self._us, TelnetOption.SGA, _QInput.ENABLE_REQUESTED)
        self._request(self._him, TelnetOption.SGA, _QInput.ENABLE_REQUESTED)
        self._request(self._us, TelnetOption.BINARY, _QInput.ENABLE_REQUESTED)
        self._request(self._him, TelnetOption.BINARY, _QInput.ENABLE_REQUESTED)
        self._request(self._him, TelnetOption.NAWS, _QInput.ENABLE_REQUESTED)

    def local_enabled(self, option: int) -> bool:
        """True when we perform ``option`` (our WILL was agreed)."""
        return self._us.state[option] is _YES

    def remote_enabled(self, option: int) -> bool:
        """True when the client performs ``option`` (its WILL was agreed)."""
        return self._him.state[option] is _YES

    def receive_data(self, data: bytes) -> None:
        """Parse bytes from the client.  Raises ``TelnetProtocolError`` when a limit is exceeded."""
        if self._error:
            raise TelnetProtocolError(self._error)
        if self._state is _ParseState.DATA and _IAC_BYTE not in data:
            if data:
                self._add_data(data)
                self._flush_data()
            return
        self._parse(data)
        self._flush_data()

    def passes_through(self, data: bytes) -> bool:
        """True when ``data`` is plain client data that ``receive_data`` would turn into exactly one
        ``DataReceived(data)`` and nothing else: the client sends BINARY, no IAC in it, nothing pending.
        The caller then uses ``data`` as typed, without the event (the keystroke path); the codec's state
        is as if it had been received."""
        if (
            self._state is _ParseState.DATA
            and self._him.state[_BINARY] is _YES
            and not self._events
            and not self._data
            and not self._error
            and data
            and _IAC_BYTE not in data
        ):
            self._after_cr = False  # what _add_data does in BINARY
            return True
        return False

    def events_received(self) -> list[TelnetEvent]:
        """Events parsed so far, oldest first; drains them."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> bytes:
        """Bytes the codec wants sent to the client (option replies, the AYT answer); drains them."""
        if not self._outgoing:  # every keystroke asks: nothing to allocate then (no AYT answer queued)
            return b""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        self._ayt_reply_queued = False
        return out

    def encode(self, data: bytes) -> bytes:
        """Guest output → wire bytes: double 0xFF; outside our BINARY mode a bare CR becomes CR NUL."""
        global _last_encoded
        binary = self._us.state[_BINARY] is _YES
        last = _last_encoded
        if last[0] is data and last[1] is binary:
            return last[2]  # the fan-out hands one chunk to every session: encode it once, not per viewer
        wire = data
        if b"\xff" in wire:
            wire = wire.replace(b"\xff", b"\xff\xff")
        if not binary and b"\r" in wire:
            wire = _BARE_CR.sub(b"\r\x00", wire)
        _last_encoded = (data, binary, wire)
        return wire

    # -- inbound parsing --------------------------------------------------------------------------------

    def _parse(self, data: bytes) -> None:
        end = len(data)
        pos = 0
        while pos < end:
            state = self._state
            if state is _ParseState.DATA:
                iac = data.find(_IAC_BYTE, pos)
                if iac < 0:
                    self._add_data(data[pos:])
                    return
                if iac + 1 < end and data[iac + 1] == _IAC:
                    # IAC IAC, a data 0xFF: take it with the run before it, skipping the COMMAND state.
                    self._add_data(data[pos : iac + 1])
                    pos = iac + 2
                    continue
                if iac > pos:
                    self._add_data(data[pos:iac])
                pos = iac + 1
                self._state = _ParseState.COMMAND
            elif state is _ParseState.COMMAND:
                self._state = _ParseState.DATA
                self._command(data[pos])
                pos += 1
            elif state is _ParseState.OPTION:
                self._state = _ParseState.DATA
                self._negotiate(self._verb, data[pos])
                pos += 1
            elif state is _ParseState.SUBNEGOTIATION:
                iac = data.find(_IAC_BYTE, pos)
                stop = end if iac < 0 else iac
                self._add_subnegotiation(data[pos:stop])
                if iac < 0:
                    return
                pos = iac + 1
                self._state = _ParseState.SUBNEGOTIATION_IAC
            elif state is _ParseState.SUBNEGOTIATION_IAC:
                byte = data[pos]
                pos += 1
                if byte == _IAC:
                    self._state = _ParseState.SUBNEGOTIATION
                    self._add_subnegotiation(_IAC_BYTE)
                elif byte == _SE:
                    self._state = _ParseState.DATA
                    self._subnegotiation_ended()
                else:
                    # A broken subnegotiation: drop it and treat "IAC byte" as the command it looks like.
                    self._subnegotiation.clear()
                    self._state = _ParseState.DATA
                    self._command(byte)
            else:  # FAILED: unreachable, receive_data raises first
                return

    def _command(self, byte: int) -> None:
        """Handle the byte after IAC (state is already DATA; the byte may move it on)."""
        if byte == _IAC:
            self._add_data(_IAC_BYTE)
        elif _WILL <= byte <= _DONT:
            self._verb = byte
            self._state = _ParseState.OPTION
        elif byte == _SB:
            self._subnegotiation.clear()
            self._state = _ParseState.SUBNEGOTIATION
        elif byte == _BRK:
            self._flush_data()
            self._events.append(BreakReceived())
        elif byte == _IP:
            self._flush_data()
            self._events.append(InterruptReceived())
        elif byte == _AYT and not self._ayt_reply_queued:
            self._ayt_reply_queued = True
            self._outgoing += AYT_REPLY
        # NOP, DM, GA, AO, EC, EL, a stray SE and undefined command bytes: consumed (module docstring).

    def _add_data(self, data: bytes) -> None:
        """Queue client data, translating CR NUL / CR LF to CR while the client is not in BINARY."""
        if self._him.state[_BINARY] is _YES:
            self._after_cr = False
            self._data.append(data)
            return
        if self._after_cr:
            self._after_cr = False
            if data[0] in b"\x00\n":
                data = data[1:]
                if not data:
                    return
        if b"\r" in data:
            self._after_cr = data[-1] == 0x0D  # a CR that ends the data cannot be the second of a pair
            data = _CR_PAIR.sub(b"\r", data)
        self._data.append(data)

    def _flush_data(self) -> None:
        if self._data:
            data = self._data[0] if len(self._data) == 1 else b"".join(self._data)
            self._data.clear()
            self._events.append(DataReceived(data))

    def _add_subnegotiation(self, payload: bytes) -> None:
        if len(self._subnegotiation) + len(payload) > self._max_subnegotiation_bytes:
            option = _option_name((self._subnegotiation or payload)[0])
            self._fail(
                f"telnet subnegotiation for option {option} exceeds {self._max_subnegotiation_bytes} bytes"
            )
        self._subnegotiation += payload

    def _subnegotiation_ended(self) -> None:
        payload = self._subnegotiation
        if len(payload) == 5 and payload[0] == _NAWS and self._him.state[_NAWS] is _YES:
            self._flush_data()
            self._events.append(
                WindowSizeChanged(cols=(payload[1] << 8) | payload[2], rows=(payload[3] << 8) | payload[4])
            )
        # Any other payload is dropped unread (NEW-ENVIRON, LINEMODE, TTYPE, COM-PORT-OPTION, malformed NAWS).
        payload.clear()

    def _fail(self, message: str) -> None:
        self._flush_data()
        self._error = message
        self._state = _ParseState.FAILED
        raise TelnetProtocolError(message)

    # -- option negotiation (RFC 1143) ------------------------------------------------------------------

    def _negotiate(self, verb: int, option: int) -> None:
        if verb == _WILL:
            side, event = self._him, _QInput.ENABLE_RECEIVED
        elif verb == _WONT:
            side, event = self._him, _QInput.DISABLE_RECEIVED
        elif verb == _DO:
            side, event = self._us, _QInput.ENABLE_RECEIVED
        else:
            side, event = self._us, _QInput.DISABLE_RECEIVED
        old_state, old_queued = side.state[option], side.queued[option]
        state, queued, reply = _Q_METHOD[old_state, old_queued, event]
        if reply is _QReply.ACCEPT_OR_REFUSE:
            if option in side.accepted:
                state, reply = _YES, _QReply.ENABLE
            else:
                reply = _QReply.DISABLE
        if (state is not old_state or queued is not old_queued or reply is not _QReply.NONE) and (
            option != _TIMING_MARK
        ):
            self._negotiations[option] += 1
            if self._negotiations[option] > self._max_negotiations_per_option:
                self._fail(
                    f"too many telnet negotiations for option {_option_name(option)} "
                    f"(limit {self._max_negotiations_per_option})"
                )
        side.state[option], side.queued[option] = state, queued
        self._send_reply(side, option, reply)

    def _request(self, side: _Side, option: int, event: _QInput) -> None:
        state, queued, reply = _Q_METHOD[side.state[option], side.queued[option], event]
        side.state[option], side.queued[option] = state, queued
        self._send_reply(side, option, reply)

    def _send_reply(self, side: _Side, option: int, reply: _QReply) -> None:
        if reply is _QReply.ENABLE:
            self._outgoing += bytes((_IAC, side.enable_verb, option))
        elif reply is _QReply.DISABLE:
            self._outgoing += bytes((_IAC, side.disable_verb, option))
