"""The ``command`` adapter: run a program per action (argv templates, never a shell), and the bounded
child-process runner the ``ipmi`` adapter shares.

Why argv lists and no shell: the port name is substituted into the arguments (``{port}``), and whatever a
config author or a port name contains - ``;``, ``$(...)``, spaces - must reach the program as one literal
argument, never as shell syntax.  So there is no shell to inject into, and no quoting rules to get wrong.

Why a process group: the timeout must stop the whole job, not only its first process.  ``sh -c 'sleep 10'``
forks ``sleep``, which holds our pipes open; killing ``sh`` alone would leave us waiting for ``sleep`` to
close them.  Each child therefore starts its own session, and a timeout (or a cancelled caller) kills the
group with SIGKILL and reaps the child before the call returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from .base import (
    Action,
    AdapterError,
    AdapterErrorKind,
    HypervisorAdapter,
    HypervisorConfig,
    StateReport,
    VmState,
)

OUTPUT_LIMIT_BYTES = 64 * 1024  # per stream; a chatty helper cannot grow our memory
REAP_GRACE_S = 2.0  # after SIGKILL, how long we wait for the kernel to let us reap the child


@dataclass(frozen=True, slots=True)
class ProcessResult:
    returncode: int
    stdout: bytes
    stderr: bytes


async def _read_limited(stream: asyncio.StreamReader | None, limit: int) -> bytes:
    """Everything up to ``limit`` bytes; the rest is read and dropped, so the child never blocks on a pipe."""
    if stream is None:
        return b""
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) < limit:
            kept += chunk[: limit - len(kept)]
    return bytes(kept)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # the child leads its own session: pgid == pid


async def run_bounded(
    argv: Sequence[str],
    *,
    timeout_s: float,
    description: str,
    env: Mapping[str, str] | None = None,
    output_limit: int = OUTPUT_LIMIT_BYTES,
) -> ProcessResult:
    """Run ``argv`` (no shell) with stdin from /dev/null; return its status and (bounded) output.

    Raises ``AdapterError`` (prefixed with ``description``) when the program cannot be started or does not
    finish - exit *and* close its output - within ``timeout_s``; then its process group has been killed and
    reaped.  A helper that leaves a background process must detach it (setsid, output redirected), or it is
    killed at the timeout too.  A non-zero exit status is *not* an error here: callers decide what it means.
    """
    program = argv[0]
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise AdapterError(description, f"program not found: {program}", AdapterErrorKind.FAILED) from None
    except OSError as exc:
        detail = f"cannot run {program}: {exc.strerror or exc}"
        raise AdapterError(description, detail, AdapterErrorKind.FAILED) from None
    finished = False
    try:
        async with asyncio.timeout(timeout_s):
            stdout, stderr, returncode = await asyncio.gather(
                _read_limited(process.stdout, output_limit),
                _read_limited(process.stderr, output_limit),
                process.wait(),
            )
        finished = True
    except TimeoutError:
        detail = f"{program} did not finish within {timeout_s:g} s (killed)"
        raise AdapterError(description, detail, AdapterErrorKind.TIMEOUT) from None
    finally:
        if not finished:  # timed out, or our caller was cancelled: no helper outlives its call
            _kill_group(process)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REAP_GRACE_S):
                    await process.wait()
    return ProcessResult(returncode, stdout, stderr)


def summarize_output(data: bytes, limit: int = 200) -> str:
    """The first non-empty line of a helper's output, printable and short, for an error message."""
    text = data.decode("utf-8", "replace")
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    line = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ----------------------------------------------------------------------------------------------------
# Configuration and adapter

PORT_PLACEHOLDER = "{port}"

# First word of the state program's output -> state.  Covers our own words and `virsh domstate`'s
# ("running", "idle", "paused", "in shutdown", "shut off", "crashed", "pmsuspended", "dying").
_STATE_WORDS: dict[str, VmState] = {
    "running": VmState.RUNNING,
    "on": VmState.RUNNING,
    "idle": VmState.RUNNING,
    "blocked": VmState.RUNNING,
    "in": VmState.RUNNING,  # "in shutdown": still running until it is off
    "paused": VmState.PAUSED,
    "suspended": VmState.PAUSED,
    "pmsuspended": VmState.PAUSED,
    "shutdown": VmState.SHUTDOWN,
    "stopped": VmState.STOPPED,
    "off": VmState.STOPPED,
    "shut": VmState.STOPPED,  # "shut off"
    "dying": VmState.STOPPED,
    "crashed": VmState.CRASHED,
    "panicked": VmState.CRASHED,
    "unknown": VmState.UNKNOWN,
}


@dataclass(frozen=True, slots=True)
class CommandConfig(HypervisorConfig):
    """``type = "command"``: one argv list per action; ``{port}`` in any argument becomes the port name."""

    type: ClassVar[str] = "command"
    nmi: tuple[str, ...] | None = None
    reset: tuple[str, ...] | None = None
    restart: tuple[str, ...] | None = None
    state: tuple[str, ...] | None = None
    start: tuple[str, ...] | None = None

    def argv_for(self, action: Action) -> tuple[str, ...] | None:
        argv: tuple[str, ...] | None = getattr(self, action.value)
        return argv


class CommandAdapter(HypervisorAdapter):
    """Runs the configured program for each action.  Exit status 0 means done; anything else is an error
    whose message quotes the first line the program wrote to stderr (or stdout).

    ``state`` runs the ``state`` program and reads the first word of its output (``running``, ``paused``,
    ``shutdown``, ``stopped``, ``crashed``, or virsh's ``shut off``/``idle``/...); the rest of that line is
    the reason.  Without a ``state`` program the state is ``unknown``.
    """

    kind: ClassVar[str] = "command"

    def __init__(self, config: CommandConfig, port_name: str) -> None:
        super().__init__(f"command hypervisor of port {port_name}", config.timeout_s)
        self.config = config
        self.port_name = port_name

    @property
    def actions(self) -> frozenset[Action]:
        return frozenset(action for action in Action if self.config.argv_for(action) is not None)

    def argv(self, action: Action) -> list[str] | None:
        """The argv for ``action`` with ``{port}`` replaced; None when the action is not configured."""
        template = self.config.argv_for(action)
        if template is None:
            return None
        return [arg.replace(PORT_PLACEHOLDER, self.port_name) for arg in template]

    async def _run(self, action: Action) -> ProcessResult:
        argv = self.argv(action)
        if argv is None:
            raise self._unsupported(action)
        return await run_bounded(argv, timeout_s=self.timeout_s, description=f"{self.description}: {action}")

    async def _do_action(self, action: Action) -> None:
        result = await self._run(action)
        if result.returncode != 0:
            raise self._error(f"{action}: {_exit_text(result)}", AdapterErrorKind.REFUSED)

    async def _query_state(self) -> StateReport:
        if self.config.state is None:
            return StateReport(VmState.UNKNOWN, "no state command configured")
        try:
            result = await self._run(Action.STATE)
        except AdapterError as exc:
            return StateReport(VmState.UNKNOWN, exc.detail)
        if result.returncode != 0:
            return StateReport(VmState.UNKNOWN, f"state: {_exit_text(result)}")
        line = summarize_output(result.stdout)
        word, _, rest = line.partition(" ")
        state = _STATE_WORDS.get(word.lower())
        if state is None:
            return StateReport(VmState.UNKNOWN, f"state command printed {line!r}")
        return StateReport(state, rest.strip() or line)


def _exit_text(result: ProcessResult) -> str:
    code = result.returncode
    status = f"exit status {code}" if code >= 0 else f"killed by signal {-code}"
    said = summarize_output(result.stderr) or summarize_output(result.stdout)
    return f"{status}: {said}" if said else status
