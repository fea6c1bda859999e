"""structlog set-up: human-readable console lines or JSON lines on stderr (journald picks either up).

Guest text never becomes a format string: every value is passed as a field and rendered escaped.

Everything the process logs goes through structlog, so that ``log_format = "json"`` really means one JSON
object per line.  Two other sources would otherwise write to stderr on their own:

* the standard ``logging`` module, which aiohttp, asyncio and other libraries use.  A bridge handler on the
  root logger turns each record into one structlog event.  aiohttp logs every malformed request
  (``aiohttp.server``: "Error handling request from …" with the parser's exception) with an 11-line
  traceback; the bridge makes that one ``http_bad_request`` line with the peer and the parser's reason.
* the event loop's exception handler (``install_loop_exception_handler``), which asyncio calls for errors
  it cannot raise anywhere, e.g. an ``accept()`` that failed with EMFILE: that becomes ``accept_failed``
  with the errno name and the listener's address.

A peer controls how often these happen (a flood of bad requests, connections beyond the descriptor limit:
CPython's accept loop reports EMFILE up to 100 times per readiness, then again every second), so each kind
is rate-limited: at most a few lines per ``RATE_INTERVAL_S``, the rest counted and reported in one
``log_suppressed`` line when the interval ends.  Nothing is dropped without being counted.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import structlog

if TYPE_CHECKING:
    from aiohttp.http_exceptions import HttpProcessingError

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

RATE_INTERVAL_S = 1.0
# Lines per interval and per key before the rest are only counted.  accept_failed once per interval and
# listener: asyncio's accept loop retries every second, so one line says all there is to say.
BURST_BAD_REQUEST = 10
BURST_ACCEPT_FAILED = 1
BURST_DEFAULT = 5
_MAX_TEXT = 300  # peer-controlled text (a parser's reason) is cut to this many characters
_MAX_TRACEBACK = 8000
# Raised by accept() when the process or system is out of descriptors or memory: transient, retried.
_ACCEPT_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

log = structlog.get_logger("serialmuxd.log")


# -- rate limiting ---------------------------------------------------------------------------------------
class Verdict(NamedTuple):
    log: bool  # write this line
    unreported: int  # lines suppressed in an earlier, ended interval that nobody reported yet
    flush_in_s: float | None  # first suppression of this interval: report the count after this long


@dataclass(slots=True)
class _Window:
    start: float
    logged: int = 0
    suppressed: int = 0


class LogRateLimiter:
    """Fixed intervals per key: the first ``burst`` lines of an interval are written, the rest counted.

    The count of an ended interval is handed out exactly once: by ``flush`` (called from a timer when the
    interval ends) or, when no timer could be set, by the next ``admit`` of that key.  The clock is passed
    in, so tests need no sleeps.  Keys come from code (event names, configured listener addresses), not from
    peers; the table is still bounded, ended intervals being dropped first.
    """

    MAX_KEYS = 256

    def __init__(self, interval_s: float = RATE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._windows: dict[str, _Window] = {}

    def admit(self, key: str, now: float, burst: int) -> Verdict:
        window = self._windows.get(key)
        unreported = 0
        if window is None or now - window.start >= self.interval_s:
            if window is not None:
                unreported = window.suppressed
            elif len(self._windows) >= self.MAX_KEYS:
                self._prune(now)
            window = self._windows[key] = _Window(now)
        if window.logged < burst:
            window.logged += 1
            return Verdict(True, unreported, None)
        window.suppressed += 1
        flush_in_s = window.start + self.interval_s - now if window.suppressed == 1 else None
        return Verdict(False, unreported, flush_in_s)

    def flush(self, key: str, now: float) -> int:
        """The count suppressed in ``key``'s interval once it has ended (0 before that, or if reported)."""
        window = self._windows.get(key)
        if window is None or now - window.start < self.interval_s:
            return 0
        count, window.suppressed = window.suppressed, 0
        return count

    def _prune(self, now: float) -> None:
        ended = [k for k, w in self._windows.items() if now - w.start >= self.interval_s and not w.suppressed]
        for key in ended or list(self._windows)[: self.MAX_KEYS // 2]:
            del self._windows[key]


_limiter = LogRateLimiter()


def _emit(level: str, event: str, key: str, burst: int, **fields: Any) -> None:
    """Log ``event`` unless ``key`` is over its rate; suppressed lines are counted and reported later."""
    verdict = _limiter.admit(key, time.monotonic(), burst)
    if verdict.unreported:
        _report_suppressed(key, verdict.unreported, level)
    if verdict.log:
        getattr(log, level)(event, **fields)
    elif verdict.flush_in_s is not None:
        # Report the count when the interval ends even if the flood stops now.  Without a loop in this
        # thread the next line of this key reports it instead.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_later(max(verdict.flush_in_s, 0.0) + 0.01, _flush, key, level)


def _flush(key: str, level: str) -> None:
    count = _limiter.flush(key, time.monotonic())
    if count:
        _report_suppressed(key, count, level)


def _report_suppressed(key: str, count: int, level: str) -> None:
    # At the level of what was suppressed: a log level that shows those lines shows their count too.
    getattr(log, level)(
        "log_suppressed",
        suppressed_event=key.partition(" ")[0],
        key=key,
        suppressed=count,
        interval_s=_limiter.interval_s,
    )


def _clean(text: str, limit: int = _MAX_TEXT) -> str:
    """Peer-controlled text for a log field: control characters shown as ``\\xNN``, length bounded."""
    text = text[:limit]
    return "".join(f"\\x{ord(ch):02x}" if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 else ch for ch in text)


def _traceback_text(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return text[-_MAX_TRACEBACK:]


def _level_name(levelno: int) -> str:
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    return "info" if levelno >= logging.INFO else "debug"


# -- the standard logging module -------------------------------------------------------------------------


def _http_processing_error() -> type[HttpProcessingError]:
    """aiohttp's bad-request exception, imported when aiohttp logs one (it is loaded then): a daemon
    without an HTTP listener never loads aiohttp (~0.15 s of its start)."""
    from aiohttp.http_exceptions import HttpProcessingError

    return HttpProcessingError


class StructlogBridge(logging.Handler):
    """Root-logger handler: each standard ``logging`` record becomes one rate-limited structlog line."""

    def __init__(self, min_level: int) -> None:
        super().__init__(logging.DEBUG)
        self.min_level = min_level

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exc = record.exc_info[1] if record.exc_info else None
            if record.name == "aiohttp.server" and isinstance(exc, _http_processing_error()):
                self._bad_request(record, exc)
                return
            if record.levelno < self.min_level:
                return
            fields: dict[str, Any] = {"logger": record.name, "message": _clean(record.getMessage(), 2000)}
            if exc is not None:
                fields["exception"] = _traceback_text(exc)
            _emit(
                _level_name(record.levelno),
                "library_log",
                f"library_log {record.name}",
                BURST_DEFAULT,
                **fields,
            )
        except Exception:
            self.handleError(record)

    def _bad_request(self, record: logging.LogRecord, exc: HttpProcessingError) -> None:
        # The peer's fault, not ours: no traceback, and one level for every kind (aiohttp logs a bad method
        # on the first request at debug and everything else with a traceback at error).
        if self.min_level > logging.INFO:
            return
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
        reason = str(exc.message).strip().splitlines()[0].rstrip(":") if exc.message else type(exc).__name__
        _emit(
            "info",
            "http_bad_request",
            "http_bad_request",
            BURST_BAD_REQUEST,
            peer=_clean(str(peer), 80) if peer is not None else None,
            status=exc.code,
            reason=_clean(reason),
        )


# -- the event loop's exception handler ------------------------------------------------------------------
def _listener_address(sock: object) -> str | None:
    getsockname: Callable[[], object] | None = getattr(sock, "getsockname", None)
    if getsockname is None:
        return None
    try:
        name = getsockname()
    except OSError:
        return None
    if isinstance(name, tuple) and len(name) >= 2:
        host, port = name[0], name[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(name) or None


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """For ``loop.set_exception_handler``: asyncio's unraisable errors as rate-limited structlog lines."""
    exc = context.get("exception")
    message = str(context.get("message") or "")
    if isinstance(exc, OSError) and exc.errno in _ACCEPT_RESOURCE_ERRNOS and "socket" in context:
        listener = _listener_address(context["socket"])
        _emit(
            "error",
            "accept_failed",
            f"accept_failed {listener}",
            BURST_ACCEPT_FAILED,
            errno=errno.errorcode.get(exc.errno, str(exc.errno)),
            error=exc.strerror,
            listener=listener,
            hint="connections are refused until descriptors are free; see file_descriptor_limit at start-up",
        )
        return
    fields: dict[str, Any] = {"message": _clean(message, 2000)}
    if isinstance(exc, BaseException):
        fields["exception"] = _traceback_text(exc)
    for name in ("task", "future", "handle", "protocol", "transport"):
        if name in context:
            fields[name] = _clean(repr(context[name]), 500)
    _emit("error", "asyncio_error", "asyncio_error", BURST_DEFAULT, **fields)


def install_loop_exception_handler(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Route the (running) loop's exception handler into structlog; call after ``configure_logging``."""
    (loop or asyncio.get_running_loop()).set_exception_handler(loop_exception_handler)


# -- set-up ----------------------------------------------------------------------------------------------
def configure_logging(level: str = "info", fmt: str = "console") -> None:
    min_level = _LEVELS.get(level, logging.INFO)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        # log.exception(...) elsewhere: the traceback becomes one string field, so the line stays one line.
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StructlogBridge)]:
        root.removeHandler(handler)
    root.addHandler(StructlogBridge(min_level))
    root.setLevel(min_level)
    # aiohttp logs some bad requests (a bad method on a connection's first request: TLS or other protocols
    # on the HTTP port) at debug; let those records through so every bad request gets its line.
    logging.getLogger("aiohttp.server").setLevel(logging.DEBUG)
