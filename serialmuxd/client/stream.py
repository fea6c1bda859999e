"""A console's WebSocket (``/api/v1/ports/NAME/ws``) as the client sees it: guest bytes to one callback,
the daemon's notices to another (as status lines, never mixed into the bytes), the stream offset kept
(``resume.Cursor``), and a lost connection retried with backoff from that offset (``?from=``), with one
line saying exactly how many bytes were missed (``resume.Resumption``).

Ends for good (``ClientError`` with the exit code) when the daemon closes with a final code (taken over,
disabled, access denied, a bad message) or refuses the upgrade with a 4xx; retries on lost connections,
``1001`` (daemon shutting down), ``4003`` (fell behind), ``4006`` (too many sessions) and 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp

from ..core.backoff import Backoff, BackoffPolicy
from .errors import WS_CLOSE_EXITS, ClientError, Exit, exit_for_status
from .http import Api, unreachable
from .resume import Cursor, Resumption

RETRY = BackoffPolicy(initial_s=0.2, max_s=5.0, jitter=0.2)
HEARTBEAT_S = 20.0
STABLE_S = 5.0  # a session that lasted this long was a good one: the next retry starts at RETRY.initial_s


class Handler(Protocol):
    def output(self, data: bytes) -> None: ...
    def status(self, text: str) -> None: ...
    def event(self, event: dict[str, Any]) -> None: ...
    def connected(self) -> None: ...
    def hint(self, hint: object) -> str | None: ...  # a notice's "hint" in the handler's words, or None


class ConsoleStream:
    """One console, attached until ``stop()`` or a final close; ``run()`` returns the exit code."""

    def __init__(
        self,
        api: Api,
        name: str,
        handler: Handler,
        *,
        read_only: bool,
        from_offset: int | None,
        choose_mode: Callable[[dict[str, Any], bool], str] | None = None,
    ) -> None:
        self.api = api
        self.name = name
        self.handler = handler
        self.read_only = read_only  # what the user asked for (--read-only, ~r, ~f): the next attaches' mode
        self.cursor = Cursor(from_offset)
        self._requested = from_offset
        # Given the port's status and whether this is a reconnect: "rw" or "ro" (connect's "someone is
        # writing" rule); default: read_only decides.
        self._choose_mode = choose_mode
        self.mode = "ro" if read_only else "rw"
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._stopping = False
        self._reconnect_now = asyncio.Event()
        self._closing_reason = ""
        self._backoff = Backoff(RETRY, random.random)
        self._next_mode: str | None = None  # reconnect()'s mode for the next attach only
        self._tasks: set[asyncio.Task[bool]] = set()

    # -- control ---------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stopping = True
        self._reconnect_now.set()
        self._close_soon()

    def reconnect(self, mode: str) -> None:
        """Attach again at once, in ``mode`` this once, from where we are (no byte lost on the way)."""
        self._next_mode = mode
        self._reconnect_now.set()
        self._close_soon()

    def _close_soon(self) -> None:
        if self.ws is not None and not self.ws.closed:
            task = asyncio.get_running_loop().create_task(self.ws.close())
            self._tasks.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(self._tasks.discard)

    @property
    def connected(self) -> bool:
        return self.ws is not None and not self.ws.closed

    async def send_bytes(self, data: bytes) -> bool:
        if not self.connected:
            return False
        assert self.ws is not None
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_bytes(data)
            return True
        return False

    async def send_json(self, message: dict[str, Any]) -> bool:
        if not self.connected:
            return False
        assert self.ws is not None
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(json.dumps(message))
            return True
        return False

    # -- the loop --------------------------------------------------------------------------------------
    async def run(self) -> Exit:
        resumed_from: int | None = None
        first = True
        while not self._stopping:
            try:
                status = await self.api.request("GET", Api.port_path(self.name), f"console {self.name}")
                if status.get("state") == "disabled":
                    # The upgrade would be refused with this reason, which a failed handshake does not show.
                    reason = status.get("state_reason") or "disabled"
                    raise ClientError(f"console {self.name} is disabled: {reason}", Exit.UNAVAILABLE)
                end = status.get("scrollback", {}).get("end")
                if first and self._requested is not None and isinstance(end, int) and self._requested > end:
                    raise ClientError(
                        f"--from {self._requested} is beyond the end of {self.name}'s stream ({end})",
                        Exit.USAGE,
                    )
                if self._next_mode is not None:
                    mode, self._next_mode = self._next_mode, None
                elif self._choose_mode is not None:
                    mode = self._choose_mode(status, not first)
                else:
                    mode = "ro" if self.read_only else "rw"
                began = asyncio.get_running_loop().time()
                await self._session(mode, resumed_from)
                if asyncio.get_running_loop().time() - began >= STABLE_S:
                    self._backoff.reset()  # a new incident starts quickly; a closing loop keeps backing off
            except ClientError as exc:
                if first or exc.exit_code is not Exit.UNAVAILABLE:
                    raise
                self.handler.status(f"{exc}")
            first = False
            if self._stopping:
                break
            resumed_from = self.cursor.offset
            if self._reconnect_now.is_set():
                self._reconnect_now.clear()
                continue
            delay = self._backoff.next_delay_s()
            self.handler.status(f"connection to {self.name} lost; retrying in {delay:.1f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconnect_now.wait(), delay)
            self._reconnect_now.clear()
        return Exit.OK

    async def _session(self, mode: str, resumed_from: int | None) -> None:
        params = {"mode": mode}
        requested = resumed_from if resumed_from is not None else self._requested
        if requested is not None:
            params["from"] = str(requested)
        url = self.api.base + Api.port_path(self.name, "ws")
        http = self.api.session
        assert http is not None
        try:
            ws = await http.ws_connect(url, params=params, heartbeat=HEARTBEAT_S, autoping=True)
        except aiohttp.WSServerHandshakeError as exc:
            message = f"console {self.name}: the daemon refused the WebSocket (HTTP {exc.status})"
            raise ClientError(message, exit_for_status(exc.status)) from None
        except aiohttp.ClientError as exc:
            raise unreachable(self.api.base, exc) from None
        self.ws = ws
        if self._stopping or self._reconnect_now.is_set():
            await ws.close()  # asked to stop (or switch modes) while the upgrade was on its way
        self.mode = mode
        self._closing_reason = ""
        resumption = Resumption(resumed_from) if resumed_from is not None else None
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.BINARY:
                    if resumption is not None and (line := resumption.data()):
                        self.handler.status(line)
                    self.cursor.data(len(msg.data))
                    self.handler.output(msg.data)
                elif msg.type is aiohttp.WSMsgType.TEXT:
                    try:
                        event = json.loads(msg.data)
                    except ValueError:
                        continue
                    if not isinstance(event, dict):
                        continue
                    self._event(event, requested, resumption)
        except (ConnectionError, aiohttp.ClientError):
            pass
        finally:
            self.ws = None
            with contextlib.suppress(Exception):
                await ws.close()
        if resumption is not None and (line := resumption.finish()):
            self.handler.status(line)
        if self._stopping or self._reconnect_now.is_set():
            return
        code = ws.close_code
        reason = self._closing_reason or (ws.exception() and str(ws.exception())) or ""
        if code in WS_CLOSE_EXITS:
            text = reason or f"closed by the daemon ({code})"
            raise ClientError(f"{self.name}: {text}", WS_CLOSE_EXITS[code])
        if code == 1000:
            self.handler.status(f"{self.name}: {reason or 'closed by the daemon'}")
            self._stopping = True
            return
        if reason:
            self.handler.status(f"{self.name}: {reason}")

    def _event(self, event: dict[str, Any], requested: int | None, resumption: Resumption | None) -> None:
        kind = event.get("type")
        if kind == "hello":
            self.cursor.hello(event, requested)
            self.handler.connected()
            return
        if kind == "closing":
            self._closing_reason = str(event.get("reason", ""))
            return
        if kind != "notice":
            return
        self.cursor.notice(event)
        if resumption is not None and (line := resumption.event(event)):
            self.handler.status(line)
        if resumption is not None and event.get("kind") == "missed":
            # Said once, in the resumption's own line.
            self.handler.event(event)
            return
        self.handler.event(event)
        text = event.get("text")
        if isinstance(text, str) and text:
            # The daemon's text never says how to act on it; the hint does, in this client's keys.
            how = self.handler.hint(event["hint"]) if "hint" in event else None
            self.handler.status(f"{self.name}: {text}" + (f" ({how})" if how else ""))
