"""Where a keystroke's time goes inside serialmuxd: the daemon under cProfile, driven by the bench's client.

Runs the real daemon (``python -m cProfile -o FILE -m serialmuxd run``) on one PTY port, sends
``--keys`` one-byte keystrokes that the bench echoes back at the PTY master (as ``bench/run.py``'s RTT
test does), stops the daemon with SIGTERM (cProfile writes its file on the way out) and prints the top
entries by own time, divided per keystroke, plus the number of Python calls per keystroke.  Start-up and
shutdown are subtracted by a second, identical run without keystrokes (``--no-baseline`` skips it).

Also ``--path telnet`` (telnet framing on the client connection), ``--path ws`` (a WebSocket client) and
``--cpu``: the daemon's CPU seconds per keystroke without the profiler (``/proc/PID/stat``), the figure
least disturbed by other load on the machine.

    .venv/bin/python bench/profile_path.py --path raw --keys 5000
"""

from __future__ import annotations

import argparse
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procfs
from bench.scenarios import START_TIMEOUT_S, keystroke_client
from bench.targets import PortPlan, Serialmuxd, StartOptions, default_daemon_command, free_tcp_ports
from bench.workload import Pty, drain, read_some


def drive(target: Serialmuxd, pty: Pty, path: str, keys: int) -> float:
    """Send ``keys`` keystrokes through the running daemon; returns the daemon's CPU seconds meanwhile."""
    client = keystroke_client(target, pty, path)
    try:
        pid = target.pid
        assert pid is not None
        cpu0 = procfs.cpu_seconds(pid)
        split0 = procfs.cpu_split(pid)
        for i in range(keys):
            key = bytes((0x61 + i % 26,))
            client.send(key)
            got = read_some(pty.master, 5.0, "a keystroke at the guest")
            os.write(pty.master, got)
            client.receive(len(got))
        cpu1 = procfs.cpu_seconds(pid)
        split1 = procfs.cpu_split(pid)
        print(
            f"  user {(split1[0] - split0[0]) / keys * 1e6:.1f} µs, "
            f"system {(split1[1] - split0[1]) / keys * 1e6:.1f} µs per keystroke",
            file=sys.stderr,
        )
        drain(pty.master)
        return cpu1 - cpu0
    finally:
        client.close()


def one_run(command: list[str], path: str, keys: int, workdir: Path) -> float:
    pty = Pty.open()
    target = Serialmuxd(workdir, command)
    try:
        tcp_port, http_port = free_tcp_ports(2)
        options = StartOptions(telnet=path == "telnet", http_port=http_port if path == "ws" else None)
        target.start([PortPlan(pty, tcp_port)], options, START_TIMEOUT_S)
        return drive(target, pty, path, keys) if keys else 0.0
    finally:
        target.stop()
        pty.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--path", choices=("raw", "telnet", "ws"), default="raw")
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--cpu", action="store_true", help="no profiler: daemon CPU µs per keystroke only")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--save", type=Path, help="keep the profile (pstats file) here")
    args = parser.parse_args()
    base = default_daemon_command()
    python = base[0] if base[0].endswith("python") else str(Path(base[0]).parent / "python")
    with tempfile.TemporaryDirectory(prefix="serialmuxd-profile-") as tmp:
        work = Path(tmp)
        if args.cpu:
            runs = [one_run([python, "-m", "serialmuxd"], args.path, args.keys, work) for _ in range(3)]
            per_key = sorted(runs)[1] / args.keys * 1e6
            print(f"{args.path}: daemon CPU per keystroke (median of 3 x {args.keys}): {per_key:.1f} µs")
            return
        prof = work / "keys.prof"
        one_run([python, "-m", "cProfile", "-o", str(prof), "-m", "serialmuxd"], args.path, args.keys, work)
        time.sleep(0.2)
        stats = pstats.Stats(str(prof))
        if args.save:
            stats.dump_stats(str(args.save))
        idle_calls = 0
        idle: dict[tuple[str, int, str], tuple[int, float]] = {}
        if not args.no_baseline:
            prof0 = work / "idle.prof"
            one_run([python, "-m", "cProfile", "-o", str(prof0), "-m", "serialmuxd"], args.path, 0, work)
            time.sleep(0.2)
            base_stats = pstats.Stats(str(prof0))
            for func, (_cc, nc, tt, _ct, _callers) in base_stats.stats.items():  # type: ignore[attr-defined]
                idle[func] = (nc, tt)
                idle_calls += nc
        rows = []
        total_calls = 0
        for func, (_cc, nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            nc0, tt0 = idle.get(func, (0, 0.0))
            total_calls += nc - nc0
            if (nc - nc0) / args.keys >= 0.5:  # per-keystroke work, not start-up or shutdown
                rows.append(((tt - tt0) / args.keys * 1e6, (nc - nc0) / args.keys, func))
        rows.sort(reverse=True)
        print(f"path {args.path}: {total_calls / args.keys:.1f} Python-level calls per keystroke (profiled)")
        print("| own µs per key | calls per key | function |")
        print("|---:|---:|---|")
        for us, calls, (file, line, name) in rows[: args.top]:
            where = file.split("/serialmuxd/", 1)[-1] if "/serialmuxd/" in file else file
            print(f"| {us:.2f} | {calls:.2f} | {name} ({os.path.basename(where)}:{line}) |")
        buf = io.StringIO()
        pstats.Stats(str(prof), stream=buf).sort_stats("tottime").print_stats(0)


if __name__ == "__main__":
    main()
