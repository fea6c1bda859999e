"""Micro-benchmark of guest-health matching (``serialmuxd/core/health.py``) and what it costs the fan-out.

Run: ``.venv/bin/python bench/health_match.py [--mib 16]``.  Measured in one run, on the same data:

1. ``HealthMatcher.feed`` alone, MiB/s, on
   * a realistic boot log: kernel ``[    1.234567] ...`` lines and systemd ``[  OK  ] Started ...`` lines with
     their colour escapes, ``\\r\\n`` line ends, a few incidents (one panic, one oops per 8 MiB);
   * random bytes (``os.urandom``: an ESC byte every 256 bytes on average, so nearly every chunk takes the
     cleaning path: the worst case);
   at read sizes of 256 B and 4 KiB (a serial line delivers small reads; a PTY or socket larger ones).
2. The fan-out, MiB/s: ``PortHub.device_data_received`` to 10 attached sessions (sinks that only count),
   with the port's matcher on and off (``health = false``), same chunks, best of 5.  The sinks do nothing,
   so this is the fan-out's own cost per byte, the harshest comparison for the matcher.
3. ``--e2e``: the real path, MiB/s: ``serialmuxd run`` (a separate process) between a PTY guest and one raw
   TCP client, the boot log written to the PTY master, health on and off, best of 3 each.

Baseline in the same run: the fan-out without matching.  Not part of the test suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procfs import cpu_seconds
from serialmuxd.config import DeviceKind, DeviceSpec, PortConfig
from serialmuxd.core import health_accel
from serialmuxd.core.access import AttachMode, Identity
from serialmuxd.core.health import DEFAULT_PATTERNS, HealthMatcher
from serialmuxd.devices.base import DeviceLink, LinkState
from serialmuxd.hub import EndReason, Notice, PortHub, Session

MIB = 1 << 20
SESSIONS = 10
REPEAT = 5

_KERNEL = [
    "pci 0000:00:1f.2: [8086:2922] type 00 class 0x010601",
    "EXT4-fs (vda1): mounted filesystem with ordered data mode. Quota mode: none.",
    "virtio_net virtio1 enp0s3: renamed from eth0",
    'audit: type=1400 audit({t}:{n}): apparmor="STATUS" operation="profile_load" name="/usr/bin/man"',
    "random: crng init done",
    "NET: Registered PF_INET6 protocol family",
    "systemd[1]: Mounting sys-kernel-debug.mount - Kernel Debug File System...",
    "usb 1-1: new high-speed USB device number 2 using ehci-pci",
]
_UNITS = [
    "systemd-journald.service",
    "networking.service",
    "ssh.service",
    "cron.service",
    "getty@tty1.service",
]


def boot_log(size: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    out = bytearray()
    t = 0.0
    n = 0
    while len(out) < size:
        n += 1
        t += rng.random() * 0.01
        if rng.random() < 0.3:
            unit = rng.choice(_UNITS)
            out += f"[\x1b[0;32m  OK  \x1b[0m] Started \x1b[0;1;39m{unit}\x1b[0m - {unit[:-8]}.\r\n".encode()
        else:
            text = rng.choice(_KERNEL).format(t=int(t), n=n)
            out += f"[{t:12.6f}] {text}\r\n".encode()
        if n % 40_000 == 0:
            out += f"[{t:12.6f}] Oops: 0002 [#1] PREEMPT SMP NOPTI\r\n".encode()
        if n % 80_000 == 0:
            out += f"[{t:12.6f}] Kernel panic - not syncing: Fatal exception\r\n".encode()
    return bytes(out[:size])


def chunks_of(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def best_of(run: Callable[[], None]) -> float:
    times = []
    for _ in range(REPEAT):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return min(times)


def matcher_mib_s(chunks: list[bytes], accelerate: bool) -> tuple[float, int]:
    total = sum(map(len, chunks))
    events = 0

    def run() -> None:
        nonlocal events
        matcher = HealthMatcher(DEFAULT_PATTERNS, accelerate=accelerate)
        offset = 0
        found = 0
        for chunk in chunks:
            found += len(matcher.feed(chunk, offset))
            offset += len(chunk)
        events = found
        matcher.close()

    return total / MIB / best_of(run), events


class _Link(DeviceLink):
    def start(self) -> None: ...
    async def close(self) -> None: ...
    def write(self, data: bytes) -> bool:
        return True

    def send_break(self, duration_s: float = 0.25) -> bool:
        return False

    @property
    def state(self) -> LinkState:
        return LinkState.ONLINE

    @property
    def write_buffer_size(self) -> int:
        return 0

    @property
    def description(self) -> str:
        return "bench"


class _Sink:
    def __init__(self) -> None:
        self.bytes = 0

    def session_started(self, session: Session) -> None: ...
    def send_output(self, data: bytes) -> None:
        self.bytes += len(data)

    def send_notice(self, notice: Notice) -> None: ...
    def close_session(self, reason: str, kind: EndReason) -> None: ...
    def pause_input(self) -> None: ...
    def resume_input(self) -> None: ...


def fanout_mib_s(chunks: list[bytes], health: bool, accelerate: bool = True) -> float:
    total = sum(map(len, chunks))
    config = PortConfig(name="vm1", device=DeviceSpec(DeviceKind.UNIX, "unix:/x", path="/x"), replay_bytes=0)
    config = dataclasses.replace(config, health=health, scrollback_bytes=4 * MIB)

    def run() -> None:
        link = _Link()
        hub = PortHub(config, lambda _hub: link)
        if not accelerate:
            hub.health.matcher.close()
            hub.health.matcher = HealthMatcher(DEFAULT_PATTERNS, accelerate=False)
        hub.start()
        hub.device_online("bench")
        for index in range(SESSIONS):
            hub.attach(_Sink(), Identity("telnet", f"127.0.0.1:{index}"), AttachMode.READ_ONLY)
        for chunk in chunks:
            hub.device_data_received(chunk)

    return total / MIB / best_of(run)


END_MARK = b"\r\n=== end of bench payload ===\r\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def e2e_mib_s(payload: bytes, health: bool) -> tuple[float, float]:
    """One run of the real daemon: guest PTY -> serialmuxd -> raw TCP client: payload MiB/s at the client,
    and the daemon's CPU seconds per MiB (steadier than wall time on a shared machine)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(
            f'[daemon]\nlog_level = "error"\nstate_dir = "{tmp}"\n[[ports]]\nname = "p0"\n'
            f'device = "tty:{os.ttyname(slave)}"\ntelnet = "127.0.0.1:{port}"\nraw = true\n'
            f"replay_bytes = 0\nscrollback_bytes = {4 * MIB}\nhealth = {'true' if health else 'false'}\n"
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "serialmuxd", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    client = socket.create_connection(("127.0.0.1", port), timeout=1)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            client.settimeout(30)
            time.sleep(0.5)  # the attach notice
            client.recv(1 << 20)
            received = bytearray()
            began = 0.0

            def write() -> None:
                view = memoryview(payload + END_MARK)
                while view:
                    written = os.write(master, view[: 64 * 1024])
                    view = view[written:]

            writer = threading.Thread(target=write)
            began = time.perf_counter()
            cpu_before = cpu_seconds(daemon.pid)
            writer.start()
            while END_MARK not in received[-len(END_MARK) - 4096 :]:
                chunk = client.recv(1 << 20)
                if not chunk:
                    raise RuntimeError("daemon closed the connection")
                received += chunk
            elapsed = time.perf_counter() - began
            cpu = cpu_seconds(daemon.pid) - cpu_before
            writer.join()
            client.close()
            mib = len(payload) / MIB
            return mib / elapsed, cpu / mib
        finally:
            daemon.terminate()
            daemon.wait(10)
            os.close(master)
            os.close(slave)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=16, help="MiB of each input (default 16)")
    parser.add_argument("--e2e", action="store_true", help="also measure the real daemon, health on and off")
    args = parser.parse_args()
    # The boot log's incidents are reported (log, notices) like in the daemon; keep them off the terminal.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    size = args.mib * MIB
    inputs = {"boot log": boot_log(size), "random bytes": os.urandom(size)}
    print(f"{args.mib} MiB per input, best of {REPEAT}; fan-out to {SESSIONS} sessions\n")
    backend = "hyperscan" if health_accel.available() else "portable (hyperscan not installed)"
    print(f"Pre-filter of the daemon's default: {backend}\n")
    print(
        "| input | read size | matcher MiB/s: portable | hyperscan | events "
        "| fan-out MiB/s, health off | on, hyperscan | cost | on, portable | cost |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, data in inputs.items():
        for read_size in (256, 4096):
            chunks = chunks_of(data, read_size)
            portable, events = matcher_mib_s(chunks, accelerate=False)
            accelerated, accelerated_events = matcher_mib_s(chunks, accelerate=health_accel.available())
            assert accelerated_events == events, (accelerated_events, events)
            off = fanout_mib_s(chunks, health=False)
            on = fanout_mib_s(chunks, health=True)
            on_portable = fanout_mib_s(chunks, health=True, accelerate=False)
            row = f"| {name} | {read_size} B | {portable:,.0f} | {accelerated:,.0f} | {events} | {off:,.0f}"
            row += f" | {on:,.0f} | {(off / on - 1) * 100:+.1f} % | {on_portable:,.0f}"
            print(f"{row} | {(off / on_portable - 1) * 100:+.1f} % |")
    if args.e2e:
        payload = inputs["boot log"]
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(3):
            for health in (False, True):
                runs[health].append(e2e_mib_s(payload, health))
        off, on = max(r[0] for r in runs[False]), max(r[0] for r in runs[True])
        cpu_off, cpu_on = min(r[1] for r in runs[False]), min(r[1] for r in runs[True])
        print(f"\n| real daemon ({backend}), boot log, PTY -> raw TCP | health off | health on | cost |")
        print("|---|---|---|---|")
        print(f"| MiB/s, best of 3 | {off:,.1f} | {on:,.1f} | {(off / on - 1) * 100:+.1f} % |")
        print(f"| daemon CPU ms per MiB, best of 3 | {cpu_off * 1000:.2f} | {cpu_on * 1000:.2f} ", end="")
        print(f"| {(cpu_on / cpu_off - 1) * 100:+.1f} % |")


if __name__ == "__main__":
    main()
