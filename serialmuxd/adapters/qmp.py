"""QEMU's QMP: the adapter that keeps one QMP connection per VM.

The protocol itself (greeting, capabilities negotiation, id-matched replies, events, bounded lines) is
``proto.qmp.QmpProtocol``, sans I/O; this module owns everything that waits: the socket, deadlines,
reconnects, and what QEMU's events mean for the VM's state.

Theory of operation: the adapter (``QmpAdapter``)
-------------------------------------------------
QEMU serves one client per QMP socket (``server=on,wait=off``), so serialmuxd owns the socket for the VM's
lifetime: one supervisor task connects, negotiates, asks ``query-status`` and then reads events until QEMU
goes away, and connects again (backoff 50 ms doubling to ``reconnect_max_s``) until the adapter is closed.
That gives event-driven state: ``STOP``/``RESUME``/``RESET``/``SHUTDOWN``/``GUEST_PANICKED`` update the state
at once and trigger one coalesced ``query-status`` (a ``system_reset`` under PVH boot produces ~100 ``RESET``
events in 1.5 s; they cost one or two queries, not a hundred).  A missing socket or a refused connection
means QEMU is not running: state ``stopped`` with a reason, which is what the console shows.

Actions wait for the connection only as long as their deadline allows; an action that finds the supervisor
sleeping between attempts wakes it for an immediate attempt, so "QEMU just came back" does not cost the
caller the backoff.  Every action runs under one deadline of ``timeout_s`` covering connect, send and
reply; a reply that arrives after its caller gave up is dropped.

``restart`` is graceful: ``system_powerdown`` presses the ACPI power button.  When the guest then powers off
and QEMU stays (``-no-shutdown``), the adapter sends ``system_reset`` + ``cont`` itself, so the guest boots
again (libvirt calls this a "fake reboot"); only a guest poweroff within ``restart_window_s`` of the request
counts.  Without ``-no-shutdown`` QEMU exits and the state says so.  A guest that ignores the power button
(no acpid) keeps running; only ``reset`` helps then.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import ClassVar

import structlog

# QmpErrorReply, QmpProtocol, QmpProtocolError, QmpReady and QmpReturn are re-exported (``as``) for
# guest/vm.py, which imports them from here; new code imports them from proto.qmp.
from ..proto.qmp import MAX_LINE_BYTES, QmpEvent, QmpPhase, QmpProtocolEvent, brief_json
from ..proto.qmp import QmpErrorReply as QmpErrorReply
from ..proto.qmp import QmpProtocol as QmpProtocol
from ..proto.qmp import QmpProtocolError as QmpProtocolError
from ..proto.qmp import QmpReady as QmpReady
from ..proto.qmp import QmpReturn as QmpReturn
from .base import (
    DEFAULT_TIMEOUT_S,
    Action,
    AdapterError,
    AdapterErrorKind,
    HypervisorAdapter,
    HypervisorConfig,
    StateReport,
    VmState,
)

log = structlog.get_logger("serialmuxd.adapters.qmp")

RECONNECT_MIN_S = 0.05
_QEMU_GONE = "QEMU closed the QMP connection (it exited or was killed)"


# ----------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True, slots=True)
class QmpConfig(HypervisorConfig):
    """``type = "qmp"``: ``socket`` is QEMU's ``-qmp unix:PATH,server=on,wait=off``."""

    type: ClassVar[str] = "qmp"
    socket: str = ""


# ----------------------------------------------------------------------------------------------------
# The adapter

# query-status "status" -> our state.  Anything not listed is UNKNOWN (and the reason names it).
_RUN_STATES: dict[str, VmState] = {
    "running": VmState.RUNNING,
    "shutdown": VmState.SHUTDOWN,
    "guest-panicked": VmState.CRASHED,
    "internal-error": VmState.CRASHED,
    **{
        name: VmState.PAUSED
        for name in (
            "paused",
            "prelaunch",
            "inmigrate",
            "postmigrate",
            "finish-migrate",
            "save-vm",
            "restore-vm",
            "suspended",
            "debug",
            "watchdog",
            "io-error",
            "colo",
        )
    },
}


class _Connection:
    """One QMP connection: its streams, protocol and the callers waiting for replies.  Never reused."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_line_bytes: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = QmpProtocol(max_line_bytes)
        self.pending: dict[int, asyncio.Future[object]] = {}
        self.ready = False
        self.closed_reason: str | None = None
        self.shutdown_reason: str | None = None  # from the SHUTDOWN event, to explain a following EOF
        self.restart_requested = False  # the guest powered off for restart(): reset + cont were sent
        self.broken = False  # the peer broke the protocol: whatever it is, we cannot tell the VM's state

    def flush(self) -> None:
        data = self.protocol.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)


class QmpAdapter(HypervisorAdapter):
    """A VM run by QEMU, controlled through its QMP unix socket.  See the module docstring."""

    kind: ClassVar[str] = "qmp"
    reports_resets: ClassVar[bool] = True

    def __init__(
        self,
        socket_path: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        reconnect_max_s: float = 1.0,
        restart_window_s: float = 120.0,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        super().__init__(f"qmp {socket_path}", timeout_s)
        self.socket_path = socket_path
        self.reconnect_max_s = reconnect_max_s
        self.restart_window_s = restart_window_s
        self.max_line_bytes = max_line_bytes
        self._conn: _Connection | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # refreshes and restart completions
        self._kick = asyncio.Event()  # wakes the supervisor from its backoff sleep
        self._changed = asyncio.Event()  # replaced on every connection change; see _notify
        self._attempts_ended = 0  # connection attempts that failed or whose connection ended
        self._closed = False
        self._refreshing = False
        self._refresh_again = False
        self._panicked = False  # GUEST_PANICKED seen and no RESET since (query-status may still say running)
        self._restart_armed_until: float | None = None  # restart() pressed the power button until then

    @property
    def actions(self) -> frozenset[Action]:
        return frozenset(Action)

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.ready

    # -- lifecycle --------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Start the supervisor now (actions and ``state`` also start it on first use)."""
        self._ensure_supervisor()

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in (self._supervisor, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            # On Python 3.11 asyncio.wait_for can swallow a cancellation that arrives as its inner future
            # finishes (fixed in 3.12): a task that went on looping would keep close() waiting for ever.
            # Cancel again until it is done.
            while not task.done():
                await asyncio.wait([task], timeout=1.0)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()
        self._supervisor = None
        if self._conn is not None:
            self._close_connection(self._conn, "adapter closed")
        self._notify()

    def _ensure_supervisor(self) -> None:
        if self._closed:
            raise self._error("adapter is closed", AdapterErrorKind.UNAVAILABLE)
        if self._supervisor is None:
            self._supervisor = asyncio.get_running_loop().create_task(
                self._supervise(), name=f"qmp-supervisor {self.socket_path}"
            )

    def _notify(self) -> None:
        """Wake everyone waiting for a connection change (each waiter holds the event it saw)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _supervise(self) -> None:
        delay = RECONNECT_MIN_S
        while True:
            report, was_connected = await self._attempt()
            self._attempts_ended += 1
            self._set_state(report)
            self._notify()
            delay = RECONNECT_MIN_S if was_connected else min(delay * 2, self.reconnect_max_s)
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), delay)

    async def _attempt(self) -> tuple[StateReport, bool]:
        """One connection, from connect to its end.  Returns the state to report and whether it got ready."""
        path = self.socket_path
        try:
            async with asyncio.timeout(self.timeout_s):
                reader, writer = await asyncio.open_unix_connection(path)
        except FileNotFoundError:
            return StateReport(VmState.STOPPED, f"no QMP socket at {path} (QEMU is not running)"), False
        except ConnectionRefusedError:
            return StateReport(
                VmState.STOPPED, f"QMP socket {path} refuses connections (QEMU is not running)"
            ), False
        except TimeoutError:
            return StateReport(
                VmState.UNKNOWN, f"connecting to {path} took longer than {self.timeout_s:g} s"
            ), False
        except OSError as exc:
            return StateReport(VmState.UNKNOWN, f"cannot connect to {path}: {exc.strerror or exc}"), False
        conn = _Connection(reader, writer, self.max_line_bytes)
        self._conn = conn
        loop = asyncio.get_running_loop()
        reading = loop.create_task(self._read(conn), name=f"qmp-reader {path}")
        try:
            report = await self._handshake(conn, reading)
            if report is not None:
                return report, False
            await reading  # until QEMU goes away
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            self._close_connection(conn, conn.closed_reason or "connection ended")
            self._conn = None
        return StateReport(
            VmState.UNKNOWN if conn.broken else VmState.STOPPED, self._ended_reason(conn)
        ), True

    async def _handshake(self, conn: _Connection, reading: asyncio.Task[None]) -> StateReport | None:
        """Greeting + capabilities, bounded; returns a report only on failure (then query-status runs)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while not conn.ready and not reading.done():
            waiter = self._changed
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter.wait()
            except TimeoutError:
                phase = conn.protocol.phase
                if phase is QmpPhase.GREETING:
                    what = (
                        f"QEMU sent no greeting within {self.timeout_s:g} s (is another client connected? "
                        "QEMU serves one client per QMP socket)"
                    )
                else:
                    what = f"no reply within {self.timeout_s:g} s to qmp_capabilities"
                conn.closed_reason = what
                return StateReport(VmState.UNKNOWN, f"connected to {self.socket_path} but {what}")
        if not conn.ready:
            return StateReport(VmState.STOPPED, self._ended_reason(conn))
        greeting = conn.protocol.greeting
        log.info("qmp connected", socket=self.socket_path, qemu=greeting.version if greeting else "?")
        self._notify()
        self._panicked = False  # a new QEMU (or the same one): only query-status knows
        self._request_refresh()
        return None

    def _ended_reason(self, conn: _Connection) -> str:
        reason = conn.closed_reason or _QEMU_GONE
        if conn.restart_requested:
            return (
                f"{reason} after the guest powered off for a restart; start QEMU with -no-shutdown so "
                "that restart can boot the guest again"
            )
        if conn.shutdown_reason is not None:
            return f"{reason} (QEMU exited: {conn.shutdown_reason})"
        return reason

    async def _read(self, conn: _Connection) -> None:
        try:
            while True:
                data = await conn.reader.read(65536)
                try:
                    conn.protocol.receive_data(data)
                finally:
                    for event in conn.protocol.events_received():
                        self._dispatch(conn, event)
                conn.flush()
                if not data:
                    conn.closed_reason = conn.closed_reason or _QEMU_GONE
                    return
        except QmpProtocolError as exc:
            conn.closed_reason = f"QMP protocol error: {exc}"
            conn.broken = True
            log.warning("qmp protocol error", socket=self.socket_path, error=str(exc))
        except ConnectionResetError:
            conn.closed_reason = conn.closed_reason or _QEMU_GONE
        except OSError as exc:
            conn.closed_reason = f"QMP connection failed: {exc.strerror or exc}"
        finally:
            self._close_connection(conn, conn.closed_reason or "connection ended")

    def _close_connection(self, conn: _Connection, reason: str) -> None:
        conn.closed_reason = conn.closed_reason or reason
        conn.ready = False
        for command_id, future in conn.pending.items():
            if not future.done():
                command = conn.protocol.awaiting_reply.get(command_id, "command")
                future.set_exception(
                    self._error(
                        f"connection closed before the reply to {command}: {conn.closed_reason}",
                        AdapterErrorKind.UNAVAILABLE,
                    )
                )
        conn.pending.clear()
        conn.writer.close()
        self._notify()

    # -- protocol events --------------------------------------------------------------------------------

    def _dispatch(self, conn: _Connection, event: QmpProtocolEvent) -> None:
        if isinstance(event, QmpReady):
            conn.ready = True
            self._notify()
        elif isinstance(event, QmpReturn | QmpErrorReply):
            future = conn.pending.pop(event.command_id, None)
            if future is None or future.done():
                return  # its caller gave up (timeout) - nobody to tell
            if isinstance(event, QmpReturn):
                future.set_result(event.value)
            else:
                kind = AdapterErrorKind.REFUSED
                future.set_exception(
                    self._error(f"{event.command} failed: {event.desc} ({event.error_class})", kind)
                )
        elif isinstance(event, QmpEvent):
            self._qemu_event(conn, event)

    def _qemu_event(self, conn: _Connection, event: QmpEvent) -> None:
        data = event.data
        if event.name == "RESUME":
            self._set_state(self._status_report("running"))
        elif event.name == "GUEST_PANICKED":
            self._panicked = True
            action = data.get("action", "?")
            self._set_state(
                StateReport(VmState.CRASHED, f"guest kernel panicked (GUEST_PANICKED, action {action})")
            )
        elif event.name == "RESET":
            self._panicked = False
            self._machine_reset()  # a new boot starts (console logs keep its first lines)
        elif event.name == "SHUTDOWN":
            reason = str(data.get("reason", "?"))
            conn.shutdown_reason = reason
            if data.get("guest") is True:
                self._set_state(StateReport(VmState.SHUTDOWN, f"guest powered off ({reason})"))
                self._maybe_finish_restart(conn)
        elif event.name not in ("STOP", "POWERDOWN"):
            return  # events that do not touch the power state (RTC_CHANGE, NIC_RX_FILTER_CHANGED, ...)
        log.debug("qmp event", socket=self.socket_path, event_name=event.name)
        self._request_refresh()

    def _request_refresh(self) -> None:
        """One query-status in flight at most, plus one more if events arrived meanwhile."""
        if self._refreshing:
            self._refresh_again = True
            return
        self._refreshing = True
        self._spawn(self._refresh(), "qmp-refresh")

    async def _refresh(self) -> None:
        try:
            again = True
            while again:
                self._refresh_again = False
                try:
                    report = await self._query_status()
                except AdapterError as exc:
                    if not self.connected:
                        return  # the supervisor reports the disconnect
                    report = StateReport(VmState.UNKNOWN, exc.detail)
                self._set_state(report)
                again = self._refresh_again
        finally:
            self._refreshing = False

    def _spawn(self, coroutine: Coroutine[object, object, None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            coroutine, name=f"{name} {self.socket_path}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("qmp background task failed", socket=self.socket_path, error=repr(task.exception()))

    def _status_report(self, status: str) -> StateReport:
        state = _RUN_STATES.get(status, VmState.UNKNOWN)
        if state is VmState.RUNNING and self._panicked:
            return StateReport(
                VmState.CRASHED, "guest kernel panicked (GUEST_PANICKED) and was not reset since"
            )
        reasons = {
            VmState.RUNNING: "running",
            VmState.PAUSED: f"paused (QEMU status {status!r})",
            VmState.SHUTDOWN: "guest powered off; QEMU is still running (-no-shutdown)",
        }
        return StateReport(state, reasons.get(state, f"QEMU reports status {status!r}"))

    # -- restart (ACPI power button, then reset + cont when QEMU stays) ------------------------------------

    def _maybe_finish_restart(self, conn: _Connection) -> None:
        armed = self._restart_armed_until
        if armed is None or asyncio.get_running_loop().time() > armed:
            return
        self._restart_armed_until = None
        conn.restart_requested = True
        self._spawn(self._finish_restart(), "qmp-restart")

    async def _finish_restart(self) -> None:
        try:
            deadline = asyncio.get_running_loop().time() + self.timeout_s
            await self._execute("system_reset", None, deadline)
            await self._execute("cont", None, deadline)
            log.info("qmp restart completed: guest powered off, reset and continued", socket=self.socket_path)
        except AdapterError as exc:
            log.warning("qmp restart could not boot the guest again", socket=self.socket_path, error=str(exc))

    # -- commands ---------------------------------------------------------------------------------------

    async def _connection(self, command: str, deadline: float) -> _Connection:
        """The ready connection, waiting (until ``deadline``) for a fresh attempt if there is none."""
        self._ensure_supervisor()
        failures_before = self._attempts_ended
        self._kick.set()
        while True:
            conn = self._conn
            if conn is not None and conn.ready:
                return conn
            if self._closed:
                raise self._error("adapter is closed", AdapterErrorKind.UNAVAILABLE)
            if self._attempts_ended > failures_before:
                raise self._error(
                    f"cannot send {command}: {self.current.reason}", AdapterErrorKind.UNAVAILABLE
                )
            waiter = self._changed
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter.wait()
            except TimeoutError:
                phase = conn.protocol.phase.value if conn is not None else "connecting"
                raise self._error(
                    f"no reply within {self.timeout_s:g} s to {command} (QMP connection stuck in {phase})",
                    AdapterErrorKind.TIMEOUT,
                ) from None

    async def _execute(self, command: str, arguments: Mapping[str, object] | None, deadline: float) -> object:
        conn = await self._connection(command, deadline)
        command_id = conn.protocol.send_command(command, arguments)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        conn.pending[command_id] = future
        conn.flush()
        try:
            async with asyncio.timeout_at(deadline):
                await conn.writer.drain()
                return await future
        except TimeoutError:
            raise self._error(
                f"no reply within {self.timeout_s:g} s to {command}", AdapterErrorKind.TIMEOUT
            ) from None
        except OSError as exc:
            raise self._error(
                f"cannot send {command}: {exc.strerror or exc}", AdapterErrorKind.UNAVAILABLE
            ) from None
        finally:
            conn.pending.pop(command_id, None)

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> object:
        """Run any QMP command, bounded by ``timeout_s``; returns QEMU's ``return`` value."""
        return await self._execute(command, arguments, asyncio.get_running_loop().time() + self.timeout_s)

    async def _query_status(self, deadline: float | None = None) -> StateReport:
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + self.timeout_s
        reply = await self._execute("query-status", None, deadline)
        status = reply.get("status") if isinstance(reply, dict) else None
        if not isinstance(status, str):
            return StateReport(VmState.UNKNOWN, f"query-status returned no status: {brief_json(reply)}")
        return self._status_report(status)

    async def _query_state(self) -> StateReport:
        try:
            return await self._query_status()
        except AdapterError as exc:
            if exc.kind is AdapterErrorKind.UNAVAILABLE and self.current.state in (
                VmState.STOPPED,
                VmState.UNKNOWN,
            ):
                return self.current  # the supervisor's reason: "no QMP socket at ..." and the like
            return StateReport(VmState.UNKNOWN, exc.detail)

    async def _do_action(self, action: Action) -> None:
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        if action is Action.NMI:
            await self._execute("inject-nmi", None, deadline)
        elif action is Action.RESET:
            await self._execute("system_reset", None, deadline)
        elif action is Action.RESTART:
            # Armed before sending: the SHUTDOWN event may arrive in the same read as the reply.
            self._restart_armed_until = asyncio.get_running_loop().time() + self.restart_window_s
            try:
                await self._execute("system_powerdown", None, deadline)
            except AdapterError:
                self._restart_armed_until = None
                raise
        elif action is Action.START:
            await self._start(deadline)
        else:
            raise self._unsupported(action)

    async def _start(self, deadline: float) -> None:
        try:
            report = await self._query_status(deadline)
        except AdapterError as exc:
            if exc.kind is AdapterErrorKind.UNAVAILABLE:
                raise self._error(
                    f"cannot start: {self.current.reason}; "
                    "the qmp adapter can resume a paused QEMU, not launch one",
                    AdapterErrorKind.UNAVAILABLE,
                ) from None
            raise
        if report.state is VmState.SHUTDOWN:
            await self._execute("system_reset", None, deadline)  # leaves QEMU in "prelaunch"; cont runs it
        if report.state is not VmState.RUNNING:
            await self._execute("cont", None, deadline)
        self._set_state(StateReport(VmState.RUNNING, "running"))
