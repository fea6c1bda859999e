"""The login a telnet or raw-TCP connection goes through before its session starts (with ``[auth]``).

One ``TelnetLogin`` per connection: it holds one slot of the daemon-wide ``ConnectionGate`` (so a flood of
idle connections cannot keep real users from the prompt), a grace timer (``auth.login_grace_s``), the
``proto.login`` line editor, and at most one credential check at a time.  A failed attempt is answered only
after the throttle's delay for that address and user name (``core.throttle``) and with the same words
whatever was wrong, so user names cannot be probed; three failures end the connection.

A TLS client certificate that maps to a user skips the prompt (the connection calls ``certificate`` first).
An empty user name continues without credentials where ``[auth] anonymous`` allows it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from ..auth.setup import FrontDoor
from ..core.access import Identity
from ..proto import login

MAX_ATTEMPTS = 3
_FAILED = b"\r\nLogin incorrect\r\n\r\n"


class TelnetLogin:
    def __init__(
        self,
        door: FrontDoor,
        peer: Identity,
        *,
        write: Callable[[bytes], None],
        succeeded: Callable[[Identity], None],
        failed: Callable[[str], None],
    ) -> None:
        self._door = door
        self._peer = peer
        self._write = write
        self._succeeded = succeeded
        self._failed = failed
        self._prompt = login.LoginPrompt()
        self._attempts = 0
        self._check: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._in_gate = False
        self.done = False

    def start(self) -> None:
        gate = self._door.gate
        if not gate.try_enter(self._peer.host):
            self._finish_failed("too many connections are waiting to log in; try again in a minute")
            return
        self._in_gate = True
        self._timer = asyncio.get_running_loop().call_later(self._door.login_grace_s, self._timed_out)
        self._emit(self._prompt.start())

    def feed(self, data: bytes) -> None:
        if not self.done:
            self._emit(self._prompt.feed(data))

    def close(self) -> None:
        """The connection went away: give the gate slot back, stop the timer and any check."""
        self._release()
        if self._check is not None and not self._check.done():
            self._check.cancel()
        self.done = True

    # -- internals -------------------------------------------------------------------------------
    def _emit(self, events: list[login.LoginEvent]) -> None:
        for event in events:
            if isinstance(event, login.Output):
                self._write(event.data)
            elif isinstance(event, login.Cancelled):
                self._finish_failed("login cancelled")
                return
            else:
                self._check = asyncio.get_running_loop().create_task(self._verify(event.user, event.password))

    async def _verify(self, user: str, password: str) -> None:
        if not user:
            if self._door.anonymous:
                self._finish_ok(self._peer)
            else:
                self._emit(self._prompt.retry())
            return
        auth = self._door.authenticator
        delay = auth.delay_s(self._peer, user)
        if delay > 0:
            # Held, not refused: the connection waits its turn (the grace timer still runs).
            await asyncio.sleep(delay)
        identity = await auth.password(self._peer, user, password)
        if self.done:
            return
        if identity is not None:
            self._finish_ok(identity)
            return
        self._attempts += 1
        if self._attempts >= MAX_ATTEMPTS:
            self._write(_FAILED)
            self._finish_failed("too many failed logins")
            return
        self._emit(self._prompt.retry(_FAILED))

    def _timed_out(self) -> None:
        self._timer = None
        if not self.done:
            self._finish_failed(f"login timed out after {self._door.login_grace_s:g} s")

    def _finish_ok(self, identity: Identity) -> None:
        self._release()
        self.done = True
        self._succeeded(identity)

    def _finish_failed(self, reason: str) -> None:
        self._release()
        self.done = True
        if self._check is not None and self._check is not asyncio.current_task():
            self._check.cancel()
        self._failed(reason)

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._in_gate:
            self._in_gate = False
            with contextlib.suppress(KeyError):
                self._door.gate.leave(self._peer.host)
