"""State that must survive a restart (and a SIGKILL): enable/disable switches and scrollback offsets.

One small JSON file in ``daemon.state_dir``, replaced atomically (write a temp file, fsync, rename, fsync the
directory), so a crash leaves either the old or the new state, never half of one.  Offsets are saved so that
they keep increasing across restarts: a WebSocket client resuming with ``?from=`` an offset of the previous
run is told how much it missed instead of silently getting bytes that merely share its old offset.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from .errors import StartupError

log = structlog.get_logger("serialmuxd.state")

STATE_FILE = "state.json"


@dataclass(slots=True)
class PortSwitch:
    enabled: bool
    reason: str = ""


@dataclass(slots=True)
class DaemonState:
    console_enabled: bool = True
    console_reason: str = ""
    ports: dict[str, PortSwitch] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)  # port -> ring end when last saved
    # True in a state saved by a clean stop: then ``offsets`` are the exact ends of the previous run.  While
    # running it is False and ``offsets`` are floors reserved ahead of the ends (a crash keeps those).
    clean_stop: bool = True


class StateStore:
    """Loads and saves ``DaemonState``; with no directory configured it keeps the state in memory only."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE if directory is not None else None

    def load(self) -> DaemonState:
        if self.path is None:
            return DaemonState()
        assert self.directory is not None
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as exc:
            raise StartupError(f"cannot create state directory {self.directory}: {exc.strerror}") from exc
        if not os.access(self.directory, os.W_OK):
            raise StartupError(f"state directory {self.directory} is not writable")
        try:
            raw = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return DaemonState()
        except (OSError, ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested deep
            # A damaged state file must not keep the consoles down: start from defaults, say so loudly.
            log.error("state_file_unreadable", path=str(self.path), error=str(exc))
            return DaemonState()
        return _from_json(raw)

    def save(self, state: DaemonState) -> None:
        """Replace the file atomically; raises ``OSError`` and then leaves the old file as it was."""
        if self.path is None or self.directory is None:
            return
        payload = json.dumps(_to_json(state), indent=2, sort_keys=True).encode()
        tmp = self.path.with_suffix(".tmp")
        # A leftover temp file (a crash mid-save) must not lend its mode, or be a symlink we follow: start
        # from a fresh file we create ourselves.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            try:
                view = memoryview(payload)
                while view:  # write(2) may write less than asked (a nearly full disk): write the rest
                    written = os.write(fd, view)
                    if written <= 0:
                        raise OSError(errno.ENOSPC, "short write")
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def _to_json(state: DaemonState) -> dict[str, Any]:
    return {
        "version": 1,
        "console": {"enabled": state.console_enabled, "reason": state.console_reason},
        "ports": {name: {"enabled": s.enabled, "reason": s.reason} for name, s in state.ports.items()},
        "offsets": dict(state.offsets),
        "clean_stop": state.clean_stop,
    }


def _from_json(raw: Any) -> DaemonState:
    state = DaemonState()
    if not isinstance(raw, dict):
        return state
    console = raw.get("console", {})
    if isinstance(console, dict):
        # Only a JSON boolean counts: null, 0 or "" in a damaged file must not disable every console.
        enabled = console.get("enabled", True)
        state.console_enabled = enabled if isinstance(enabled, bool) else True
        state.console_reason = str(console.get("reason", ""))
    ports = raw.get("ports", {})
    if isinstance(ports, dict):
        for name, value in ports.items():
            if isinstance(value, dict) and isinstance(value.get("enabled"), bool):
                state.ports[str(name)] = PortSwitch(value["enabled"], str(value.get("reason", "")))
    # A file from before clean_stop existed cannot vouch for exact ends.
    clean_stop = raw.get("clean_stop", False)
    state.clean_stop = clean_stop if isinstance(clean_stop, bool) else False
    offsets = raw.get("offsets", {})
    if isinstance(offsets, dict):
        for name, value in offsets.items():
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
                state.offsets[str(name)] = value
    return state
