"""Bounded output for one client, shared by every transport (telnet, raw TCP, WebSocket).

Guest bytes never wait for a client: above ``client_buffer_bytes`` unsent, the session pauses (the hub stops
feeding it and later resumes it from the ring, telling it what it missed).  serialmuxd's own messages are
not paused — a client must hear "you were taken over" even when behind — so they need their own bound: a
client that reads nothing at all would otherwise make them pile up without end.  ``OutputBudget`` is that
bound, the same on every transport: what is written while paused may reach ``NOTICE_BUDGET_FACTOR`` times
the buffer, then the connection is cut.  A closing connection gets ``CLOSE_FLUSH_TIMEOUT_S`` to flush its
last words before it is aborted.

``FrameQueue`` is the WebSocket's outgoing queue (telnet uses the transport's own buffer): a chunk of guest
output that finds the queue empty is queued as it is (no copy: a keystroke echo or a 64 KiB read goes out
as the object the device read produced); chunks that arrive while one is still queued are coalesced in
place into one ``bytearray`` frame, so a burst of one-byte reads costs one frame and no re-copying of what
is already queued.
"""

from __future__ import annotations

from collections import deque

CLOSE_FLUSH_TIMEOUT_S = 5.0
NOTICE_BUDGET_FACTOR = 4
FRAME_BYTES = 64 * 1024  # largest coalesced WebSocket frame of guest output


class OutputBudget:
    """Tracks whether a client's output is paused and how much was written to it meanwhile."""

    __slots__ = ("_written_while_paused", "limit_bytes", "paused")

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.paused = False
        self._written_while_paused = 0

    def pause(self) -> None:
        self.paused = True
        self._written_while_paused = 0

    def resume(self) -> None:
        self.paused = False

    def written(self, nbytes: int) -> bool:
        """Account for ``nbytes`` written outside the pause (notices); True if the client must be cut."""
        if not self.paused:
            return False
        self._written_while_paused += nbytes
        return self._written_while_paused > NOTICE_BUDGET_FACTOR * self.limit_bytes


class FrameQueue:
    """Outgoing WebSocket frames in order: binary (guest bytes, coalesced) and text (JSON events)."""

    __slots__ = ("_items", "queued_bytes")

    def __init__(self) -> None:
        # A chunk is queued as the bytes object it came in (no copy); only when a second one joins it is
        # it turned into a bytearray, which later chunks are appended to in place.
        self._items: deque[bytes | bytearray | str] = deque()
        self.queued_bytes = 0  # everything queued, text included: it all occupies the client's buffer

    def __bool__(self) -> bool:
        return bool(self._items)

    def push_bytes(self, data: bytes) -> None:
        items = self._items
        last = items[-1] if items else None
        if last is not None and not isinstance(last, str) and len(last) < FRAME_BYTES:
            if isinstance(last, bytes):
                last = items[-1] = bytearray(last)
            last += data  # in place: amortised, the queued bytes are not copied again
        else:
            # Kept by reference: immutable bytes only (a view of someone's buffer could change under us).
            items.append(data if type(data) is bytes else bytes(data))
        self.queued_bytes += len(data)

    def push_text(self, text: str) -> None:
        self._items.append(text)
        self.queued_bytes += len(text)

    def pop(self) -> bytes | bytearray | str:
        """The oldest frame: ``str`` for a text frame, else the guest bytes (never changed after this)."""
        item = self._items.popleft()
        self.queued_bytes -= len(item)
        return item
