"""A configuration whose listeners and devices cannot fit in the open-file limit is refused at start, with
the numbers and what to change, before anything listens; the same configuration starts when the limit
allows it.  A real ``serialmuxd run`` child under a real lowered ``RLIMIT_NOFILE``."""

from __future__ import annotations

import asyncio
import os
import resource
import sys
from pathlib import Path

import pytest

from serialmuxd.rlimits import BASE_DESCRIPTORS

pytestmark = pytest.mark.asyncio

PORTS = 30  # 30 telnet listeners + 30 unix-socket devices: 60 + the daemon's own, far above 64


def _config(tmp_path: Path) -> Path:
    lines = ["[daemon]", f'state_dir = "{tmp_path / "state"}"', 'log_format = "json"', ""]
    for i in range(PORTS):
        lines += [
            "[[ports]]",
            f'name = "p{i}"',
            f'device = "unix:{tmp_path / f"vm{i}.sock"}"',  # nobody listens there: the port stays offline
            'telnet = "127.0.0.1:0"',
            "",
        ]
    path = tmp_path / "serialmuxd.toml"
    path.write_text("\n".join(lines))
    return path


async def _run(config: Path, nofile: int | None) -> tuple[int | None, str, asyncio.subprocess.Process]:
    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "serialmuxd",
        "run",
        "--config",
        str(config),
        env={**os.environ},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        preexec_fn=limit,
    )
    assert proc.stdout is not None
    output = b""
    while b'"event": "ready"' not in output and b'"listening"' not in output:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line:
            break
        output += line
    return proc.returncode, output.decode(), proc


async def test_refused_when_listeners_and_devices_exceed_the_limit(tmp_path: Path) -> None:
    _, text, proc = await _run(_config(tmp_path), 64)
    assert await asyncio.wait_for(proc.wait(), 30) == 1
    needed = BASE_DESCRIPTORS + 2 * PORTS
    assert f"needs at least {needed} open files ({PORTS} listeners, {PORTS} for devices" in text
    assert "open-file limit is 64" in text and "LimitNOFILE" in text
    assert '"listening"' not in text  # refused before a single listener was bound


async def test_the_same_configuration_starts_when_the_limit_allows(tmp_path: Path) -> None:
    _, text, proc = await _run(_config(tmp_path), BASE_DESCRIPTORS + 2 * PORTS + 100)
    try:
        assert proc.returncode is None and '"listening"' in text
    finally:
        proc.kill()
        await proc.wait()
