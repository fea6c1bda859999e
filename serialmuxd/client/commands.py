"""The sub-commands other than ``connect``: each takes the parsed arguments and an ``Api`` and returns
the exit code; failures are ``ClientError`` (main prints them)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .. import __version__
from .errors import ClientError, Exit
from .http import Api
from .lines import StatusLines, write_all
from .stream import ConsoleStream
from .visible import Visualiser

SCROLLBACK_PAGE = 4 * 1024 * 1024


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def ports_table(ports: list[dict[str, Any]]) -> str:
    """name, state, writer, viewers, VM state: one row per console, columns aligned."""
    rows = [("NAME", "STATE", "WRITER", "VIEWERS", "VM")]
    for port in ports:
        writer = port.get("writer")
        hypervisor = port.get("hypervisor")
        state = str(port.get("state", "?"))
        if state == "offline" and port.get("state_reason"):
            state += f" ({port['state_reason']})"
        rows.append(
            (
                str(port.get("name", "?")),
                state,
                str(writer.get("who", "?")) if isinstance(writer, dict) else "-",
                str(port.get("viewers", 0)),
                str(hypervisor.get("state", "?")) if isinstance(hypervisor, dict) else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"


async def ports(args: argparse.Namespace, api: Api) -> int:
    params = {"group": args.group} if args.group else {}
    body = await api.request("GET", "/api/v1/ports", "list consoles", **params)
    listing: list[dict[str, Any]] = body.get("ports", []) if isinstance(body, dict) else []
    if args.names:
        _out("".join(f"{p.get('name')}\n" for p in listing))
    elif args.json:
        _out(json.dumps(listing, indent=2) + "\n")
    else:
        _out(ports_table(listing))
    return Exit.OK


class _Follower:
    """``stream.Handler`` for ``log --follow``: bytes to stdout (visible or raw), notices to stderr."""

    def __init__(self, raw: bool) -> None:
        self.raw = raw
        self.visualiser = Visualiser()
        self.lines = StatusLines(raw=False)

    def output(self, data: bytes) -> None:
        if self.raw:
            write_all(sys.stdout.fileno(), data)
        else:
            write_all(sys.stdout.fileno(), self.visualiser.feed(data).encode("utf-8"))

    def status(self, text: str) -> None:
        self.lines.show(text)

    def event(self, event: dict[str, Any]) -> None:
        pass

    def connected(self) -> None:
        pass

    def hint(self, hint: object) -> str | None:
        return None  # read-only: nothing to take over


async def log(args: argparse.Namespace, api: Api) -> int:
    name: str = args.console
    if args.follow:
        status = await api.request("GET", Api.port_path(name), f"console {name}")
        start = args.from_offset if args.from_offset is not None else int(status["scrollback"]["start"])
        follower = _Follower(args.raw)
        stream = ConsoleStream(api, name, follower, read_only=True, from_offset=start)
        return int(await stream.run())
    offset = args.from_offset
    visualiser = Visualiser()
    while True:
        params = {"limit": str(SCROLLBACK_PAGE)}
        if offset is not None:
            params["from"] = str(offset)
        data, headers = await api.raw(Api.port_path(name, "scrollback"), f"scrollback of {name}", **params)
        served = int(headers.get("X-Scrollback-Offset", "0"))
        if offset is not None and served > offset:
            # A hole (a console-log gap or a restart in the persisted history, or bytes the ring no
            # longer holds): the daemon goes on at the next byte it has; say how much is not there.
            gap = served - offset
            StatusLines(raw=False).show(f"{gap} bytes from offset {offset} are not in the scrollback")
        if args.raw:
            write_all(sys.stdout.fileno(), data)
        else:
            write_all(sys.stdout.fileno(), visualiser.feed(data).encode("utf-8"))
        following = int(headers.get("X-Scrollback-Next", "0"))
        end = int(headers.get("X-Scrollback-End", "0"))
        if not data or following >= end:
            break
        offset = following
    if not args.raw:
        write_all(sys.stdout.fileno(), visualiser.feed(b"", final=True).encode("utf-8"))
    return Exit.OK


async def send(args: argparse.Namespace, api: Api) -> int:
    name: str = args.console
    what = args.what
    if what == "sysrq":
        body: dict[str, Any] = {"key": args.key}
    elif what == "key":
        body = {"keys": args.keys}
        what = "keys"
    else:
        body = {}
    answer = await api.request("POST", Api.port_path(name, what), f"{args.what} {name}", body)
    extra = f" ({answer['bytes']} bytes)" if isinstance(answer, dict) and "bytes" in answer else ""
    print(f"{args.what} sent to {name}{extra}", file=sys.stderr)
    return Exit.OK


async def enable(args: argparse.Namespace, api: Api) -> int:
    on = args.command == "enable"
    reason = args.reason or ""
    if args.console is None:
        body: dict[str, Any] = {"enabled": on}
        if reason:
            body["reason"] = reason
        answer = await api.request("POST", "/api/v1/console", f"{args.command} every console", body)
        state = "enabled" if answer.get("enabled") else f"disabled: {answer.get('reason', '')}"
        print(f"console access on this host: {state}")
        return Exit.OK
    body = {"reason": reason} if reason and not on else {}
    answer = await api.request(
        "POST", Api.port_path(args.console, args.command), f"{args.command} {args.console}", body
    )
    state = str(answer.get("state", "?"))
    if answer.get("state_reason") and state == "disabled":
        state += f": {answer['state_reason']}"
    print(f"{args.console}: {state}")
    return Exit.OK


async def daemon_version(api: Api) -> str | None:
    """The daemon's version, from its OpenAPI document (``info.version``; served to everyone, like
    /healthz), or None if it does not say (an older or a different server)."""
    try:
        document = await api.request("GET", "/api/v1/openapi.json", "API description")
    except ClientError:
        return None
    info = document.get("info") if isinstance(document, dict) else None
    version = info.get("version") if isinstance(info, dict) else None
    return version if isinstance(version, str) and version else None


def version_line(base: str, health: str, version: str | None) -> list[str]:
    """The first line of ``status``, and a second one when the daemon's version is not the client's."""
    if version is None:
        return [f"serialmuxd at {base}: {health}"]
    lines = [f"serialmuxd {version} at {base}: {health}"]
    if version != __version__:
        lines.append(f"  (this client is serialmux {__version__})")
    return lines


async def status(args: argparse.Namespace, api: Api) -> int:
    health = await api.request("GET", "/healthz", "health check")
    listing = await api.request("GET", "/api/v1/ports", "list consoles")
    states = health.get("states", {}) if isinstance(health, dict) else {}
    counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none"
    lines = version_line(api.base, str(health.get("status", "?")), await daemon_version(api))
    visible = listing.get("ports", []) if isinstance(listing, dict) else []
    lines.append(f"consoles: {health.get('ports', '?')} ({counts}); you may see {len(visible)}")
    try:
        switch = await api.request("GET", "/api/v1/console", "console switch")
    except ClientError as exc:
        if exc.exit_code is not Exit.DENIED:
            raise
    else:
        on = switch.get("enabled")
        lines.append("console access: " + ("enabled" if on else f"disabled: {switch.get('reason', '')}"))
    writing = [p for p in visible if isinstance(p.get("writer"), dict)]
    for port in writing:
        since = time.strftime("%H:%M:%S", time.localtime(float(port["writer"].get("since", 0))))
        lines.append(f"  {port['name']}: {port['writer'].get('who')} writing since {since}")
    _out("\n".join(lines) + "\n")
    return Exit.OK
