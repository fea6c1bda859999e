"""``GET /api/v1/ports/{name}/recording``: a stretch of scrollback as an asciicast v2 recording.

asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/) is newline-delimited JSON: a header object,
then one ``[seconds, "o", text]`` event per chunk of output, ``seconds`` counted from the first event.  The
events here are the guest's own chunks with the times the hub's timeline recorded when they arrived
(``core.timeline``), so ``asciinema play`` replays a boot or a crash at its original pace.

Text: guest bytes are decoded as UTF-8 with invalid bytes replaced.  One incremental decoder runs across
the events, so a multi-byte character the guest wrote in two pieces comes out whole, in the event of its
last byte; an event whose bytes are all the head of such a character is left out.

Size: at most ``MAX_RECORDING_BYTES`` of scrollback per request (the scrollback endpoint's bound); a longer
range is cut there and ``X-Scrollback-Next`` says where the next request starts.  The document is built in
a worker thread, so a large one never holds up the event loop (and with it every console's output).

Who may: the same as the scrollback (``view`` on the console), decided by ``Console.scrollback`` through
``Console.recording``; audited as ``scrollback_download`` with ``format=asciicast``.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import time
from collections.abc import Sequence

from aiohttp import web

from ...hub.status import RecordingSlice
from .common import console, identity, int_param
from .errors import ApiError
from .sessions import audit

CONTENT_TYPE = "application/x-asciicast"
DEFAULT_WINDOW = (80, 24)
MAX_RECORDING_BYTES = 16 * 1024 * 1024


def asciicast_events(
    data: bytes, segments: Sequence[tuple[int, float]], offset: int
) -> list[tuple[float, str]]:
    """``data`` (starting at absolute ``offset``) cut at the ``segments`` boundaries, as (wall time, text)
    events; see the module docstring for how text is decoded."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    events: list[tuple[float, str]] = []
    end = offset + len(data)
    for i, (start, at) in enumerate(segments):
        stop = segments[i + 1][0] if i + 1 < len(segments) else end
        text = decoder.decode(data[start - offset : stop - offset])
        if text:
            events.append((at, text))
    tail = decoder.decode(b"", final=True)  # a character cut by ``to``: U+FFFD
    if tail:
        if events:
            events[-1] = (events[-1][0], events[-1][1] + tail)
        elif segments:
            events.append((segments[-1][1], tail))
    return events


def asciicast(recording: RecordingSlice, title: str, now: float) -> bytes:
    """The whole asciicast v2 document; ``now`` is the header's timestamp when there is no output."""
    scrollback = recording.scrollback
    events = asciicast_events(scrollback.data, recording.segments, scrollback.offset)
    started = events[0][0] if events else now
    width, height = recording.window or DEFAULT_WINDOW
    header = {"version": 2, "width": width, "height": height, "timestamp": int(started), "title": title}
    lines = [json.dumps(header)]
    lines.extend(json.dumps([round(at - started, 6), "o", text]) for at, text in events)
    return ("\n".join(lines) + "\n").encode()


async def recording(request: web.Request) -> web.Response:
    target = console(request)
    ring_start, ring_end = target.scrollback_bounds()
    start = int_param(request, "from", ring_start, 0, 2**63)
    end = int_param(request, "to", ring_end, 0, 2**63)
    assert start is not None and end is not None
    # The same checks, codes and fields as the scrollback endpoint (rest.py).
    for name, value in (("from", start), ("to", end)):
        if value > ring_end:
            raise ApiError(
                "bad_request", f"{name}={value} is beyond the end of the stream ({ring_end})", end=ring_end
            )
    if start > end:
        raise ApiError("bad_request", f"from={start} is after to={end}")
    if start < ring_start:
        raise ApiError(
            "offset_unavailable",
            f"from={start} has been overwritten; the oldest available offset is {ring_start}",
            start=ring_start,
            end=ring_end,
        )
    who = identity(request, "http")
    result = target.recording(who, start, min(end, start + MAX_RECORDING_BYTES))
    data = result.scrollback
    attachment = request.query.get("download") == "1"
    # Who read how much of a console's past, never what it said (the audit trail holds no console text).
    audit(
        "scrollback_download",
        request,
        who,
        port=target.name,
        bytes=len(data.data),
        offset=data.offset,
        format="asciicast",
        attachment=attachment,
        result="ok",
    )
    stop = data.offset + len(data.data)
    headers = {
        "X-Scrollback-Start": str(data.start),
        "X-Scrollback-End": str(data.end),
        "X-Scrollback-Offset": str(data.offset),
        "X-Scrollback-Next": str(stop),
        # Bytes before this offset had their times dropped (the timeline's bound): they play at once.
        "X-Recording-Timed-From": str(max(result.timed_from, data.offset)),
        "Cache-Control": "no-store",
    }
    if attachment:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        headers["Content-Disposition"] = f'attachment; filename="{target.name}-{stamp}.cast"'
    body = await asyncio.to_thread(asciicast, result, f"{target.name} {data.offset}-{stop}", time.time())
    return web.Response(body=body, content_type=CONTENT_TYPE, headers=headers)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/ports/{name}/recording", recording)
