"""Benchmark serialmuxd against ser2net (tuned), socat and a bare PTY, all in the same run.

Usage::

    .venv/bin/python bench/run.py --quick        # smoke run, about a minute
    .venv/bin/python bench/run.py                # full run (see bench/README.md)

Prints a Markdown table (with ratios serialmuxd / baseline) and the goals it is held to, and writes
``bench/results/latest.md``, ``latest.json`` and ``latest.svg`` (a chart of the goals).  Every process the
bench starts is stopped by its pid, also on failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import goals, scenarios
from bench.scenarios import MIB, Metrics
from bench.targets import BarePty, Ser2net, Serialmuxd, Socat, Target, Unsupported, make_workdir
from bench.workload import BenchError, Stream, check_stop, request_stop

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_ORDER = ("serialmuxd", "ser2net", "socat", "pty")
SCENARIO_ORDER = (
    "throughput",
    "throughput_telnet",
    "throughput_ws",
    "rtt",
    "rtt_telnet",
    "rtt_ws",
    "fanout_10",
    "fanout_100",
    "fanout_ws_100",
    "idle",
    "consoles",
    "sessions_telnet",
    "sessions_ws",
)
DAEMON = "serialmuxd"


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes for one run: ``--quick`` shrinks everything, the default is the full run."""

    throughput_mib: int
    fanout10_mib: int
    fanout100_mib: float
    rtt_samples: int
    rtt_warmup: int
    idle_ports: int
    idle_window_s: float
    fresh_samples: int
    repeat: int
    fanout_ws_mib: float = 8
    fanout_ws_rate_mib_s: float = 1.0  # guest pace: the bench's one thread keeps up with 95 viewers
    fanout_ws_slow: int = 5
    consoles: int = 10000
    sessions: int = 1000


FULL = Plan(64, 16, 2, 2000, 200, 1000, 5.0, 20, 3)
QUICK = Plan(
    8, 2, 0.25, 300, 50, 100, 2.0, 5, 1, fanout_ws_mib=8, fanout_ws_slow=2, consoles=1000, sessions=100
)


# -- running -------------------------------------------------------------------------------------------------


def _median_metrics(runs: list[Metrics]) -> Metrics:
    """Per-key median of numeric results over repeats; exactness must hold in every repeat."""
    merged: Metrics = dict(runs[0])
    for key in runs[0]:
        values = [r.get(key) for r in runs]
        floats = [v for v in values if isinstance(v, float)]
        if len(floats) == len(values):
            merged[key] = statistics.median(floats)
    if "exact" in merged:
        merged["exact"] = all(bool(r.get("exact")) for r in runs)
        merged["detail"] = "; ".join(str(r["detail"]) for r in runs if r.get("detail"))
    merged["repeats"] = len(runs)
    return merged


def _measure(name: str, target: Target, fn: Callable[[], Metrics]) -> Metrics:
    print(f"  {name:<18} {target.name:<11} ...", end="", flush=True, file=sys.stderr)
    started = time.perf_counter()
    try:
        result = fn()
        result["status"] = "ok"
    except Unsupported as exc:
        result = {"status": "n/a", "reason": str(exc)}
    except (BenchError, OSError) as exc:
        result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # a bench bug: report it, keep measuring the rest
        traceback.print_exc()
        result = {"status": "failed", "reason": f"bench error {type(exc).__name__}: {exc}"}
    print(f" {result['status']} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    if result["status"] == "failed":
        print(f"    {result['reason']}", file=sys.stderr)
    return result


def run_all(targets: Sequence[Target], wanted: Sequence[str], plan: Plan) -> dict[str, dict[str, Metrics]]:
    streams: dict[tuple[float, int], Stream] = {}

    def stream(mib: float, seed: int) -> Stream:
        key = (mib, seed)
        if key not in streams:
            streams[key] = Stream.build(int(mib * MIB), seed)
        return streams[key]

    jobs: dict[str, Callable[[Target], Metrics]] = {
        "throughput": lambda t: scenarios.throughput(t, stream(plan.throughput_mib, 1), telnet=False),
        "throughput_telnet": lambda t: scenarios.throughput(t, stream(plan.throughput_mib, 1), telnet=True),
        "throughput_ws": lambda t: scenarios.throughput(
            t, stream(plan.throughput_mib, 1), telnet=False, ws=True
        ),
        "rtt": lambda t: scenarios.rtt(t, plan.rtt_samples, plan.rtt_warmup),
        "rtt_telnet": lambda t: scenarios.rtt(t, plan.rtt_samples, plan.rtt_warmup, "telnet"),
        "rtt_ws": lambda t: scenarios.rtt(t, plan.rtt_samples, plan.rtt_warmup, "ws"),
        "fanout_ws_100": lambda t: scenarios.fanout_ws(
            t, stream(plan.fanout_ws_mib, 4), 100, plan.fanout_ws_slow, plan.fanout_ws_rate_mib_s * MIB
        ),
        "fanout_10": lambda t: scenarios.fanout(t, stream(plan.fanout10_mib, 2), 10),
        "fanout_100": lambda t: scenarios.fanout(t, stream(plan.fanout100_mib, 3), 100),
        "idle": lambda t: scenarios.idle_ports(t, plan.idle_ports, plan.idle_window_s, plan.fresh_samples),
        # 10 s idle window: one clock tick is then 0.1 %.
        "consoles": lambda t: scenarios.consoles(
            t, plan.consoles, 2 * plan.idle_window_s, plan.fresh_samples
        ),
        "sessions_telnet": lambda t: scenarios.sessions_memory(t, plan.sessions, "telnet"),
        "sessions_ws": lambda t: scenarios.sessions_memory(t, plan.sessions, "ws"),
    }
    repeated = {
        "throughput",
        "throughput_telnet",
        "throughput_ws",
        "rtt",
        "rtt_telnet",
        "rtt_ws",
        "fanout_10",
        "fanout_100",
        "fanout_ws_100",
    }
    results: dict[str, dict[str, Metrics]] = {}
    for group in _groups(wanted):
        print(f"{' + '.join(group)}:", file=sys.stderr)
        runs: dict[tuple[str, str], list[Metrics]] = {(n, t.name): [] for n in group for t in targets}
        # Interleave targets within each repeat (A B C, A B C, ...), and the scenarios of a group (raw,
        # telnet and WebSocket of one measurement) within each repeat too, so drift on the machine hits all
        # alike: the goals compare across them.
        for _ in range(plan.repeat if group[0] in repeated else 1):
            for name in group:
                for target in targets:
                    check_stop()
                    runs[name, target.name].append(
                        _measure(name, target, functools.partial(jobs[name], target))
                    )
        for name in group:
            results[name] = {}
            for target in targets:
                done = runs[name, target.name]
                ok = [r for r in done if r["status"] == "ok"]
                results[name][target.name] = _median_metrics(ok) if len(ok) == len(done) else done[-1]
                if ok and len(ok) != len(done):
                    failed = next(r for r in done if r["status"] != "ok")
                    results[name][target.name] = failed
    return results


# Scenarios measured interleaved with each other (their ratios are goals).
_INTERLEAVED = (("throughput", "throughput_telnet", "throughput_ws"), ("rtt", "rtt_telnet", "rtt_ws"))


def _groups(wanted: Sequence[str]) -> list[tuple[str, ...]]:
    """``wanted`` in order, the members of an interleaved family that were asked for taken together."""
    out: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for name in wanted:
        if name in seen:
            continue
        family = next((f for f in _INTERLEAVED if name in f), (name,))
        group = tuple(n for n in family if n in wanted)
        seen.update(group)
        out.append(group)
    return out


# -- reporting -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    scenario: str
    key: str
    fmt: str
    higher_is_better: bool


def rows(plan: Plan) -> list[Row]:
    return [
        Row(
            f"Throughput guest→client, raw TCP, {plan.throughput_mib} MiB (MiB/s)",
            "throughput",
            "mib_s",
            "{:.1f}",
            True,
        ),
        Row("  relay CPU (s per MiB)", "throughput", "cpu_s_per_mib", "{:.4f}", False),
        Row(
            f"Throughput with telnet framing, {plan.throughput_mib} MiB (MiB/s)",
            "throughput_telnet",
            "mib_s",
            "{:.1f}",
            True,
        ),
        Row("  relay CPU (s per MiB)", "throughput_telnet", "cpu_s_per_mib", "{:.4f}", False),
        Row(
            f"Throughput to one WebSocket client, {plan.throughput_mib} MiB (MiB/s)",
            "throughput_ws",
            "mib_s",
            "{:.1f}",
            True,
        ),
        Row("  relay CPU (s per MiB)", "throughput_ws", "cpu_s_per_mib", "{:.4f}", False),
        Row(f"Keystroke RTT p50, raw TCP, {plan.rtt_samples} samples (µs)", "rtt", "p50_us", "{:.0f}", False),
        Row("Keystroke RTT p99, raw TCP (µs)", "rtt", "p99_us", "{:.0f}", False),
        Row("  relay CPU per keystroke (µs)", "rtt", "cpu_us_per_key", "{:.0f}", False),
        Row("Keystroke RTT p50, telnet (µs)", "rtt_telnet", "p50_us", "{:.0f}", False),
        Row("Keystroke RTT p99, telnet (µs)", "rtt_telnet", "p99_us", "{:.0f}", False),
        Row("  relay CPU per keystroke (µs)", "rtt_telnet", "cpu_us_per_key", "{:.0f}", False),
        Row("Keystroke RTT p50, WebSocket (µs)", "rtt_ws", "p50_us", "{:.0f}", False),
        Row("Keystroke RTT p99, WebSocket (µs)", "rtt_ws", "p99_us", "{:.0f}", False),
        Row("  relay CPU per keystroke (µs)", "rtt_ws", "cpu_us_per_key", "{:.0f}", False),
        Row(
            f"Fan-out 10 viewers x {plan.fanout10_mib:g} MiB, aggregate (MiB/s)",
            "fanout_10",
            "aggregate_mib_s",
            "{:.1f}",
            True,
        ),
        Row("  relay CPU (s per MiB delivered)", "fanout_10", "cpu_s_per_mib_delivered", "{:.4f}", False),
        Row(
            f"Fan-out 100 viewers x {plan.fanout100_mib:g} MiB, aggregate (MiB/s)",
            "fanout_100",
            "aggregate_mib_s",
            "{:.1f}",
            True,
        ),
        Row("  relay CPU (s per MiB delivered)", "fanout_100", "cpu_s_per_mib_delivered", "{:.4f}", False),
        Row(
            f"Fan-out 100 WebSocket viewers ({plan.fanout_ws_slow} slow) x {plan.fanout_ws_mib:g} MiB, "
            f"guest paced at {plan.fanout_ws_rate_mib_s:g} MiB/s: aggregate of the fast (MiB/s)",
            "fanout_ws_100",
            "aggregate_mib_s",
            "{:.1f}",
            True,
        ),
        Row("  relay CPU (s per MiB delivered)", "fanout_ws_100", "cpu_s_per_mib_delivered", "{:.4f}", False),
        Row("  slow viewers resynced exactly", "fanout_ws_100", "slow_resynced_exactly", "{:.0f}", True),
        Row("  bytes a slow viewer missed (fewest)", "fanout_ws_100", "slow_missed_min", "{:,.0f}", False),
        Row(f"{plan.idle_ports} idle ports: RSS (MiB)", "idle", "rss_mib", "{:.1f}", False),
        Row(f"  idle CPU over {plan.idle_window_s:g} s (%)", "idle", "idle_cpu_pct", "{:.2f}", False),
        Row("  start → all ports listening (s)", "idle", "listen_s", "{:.3f}", False),
        Row("  start → READY=1 (s)", "idle", "ready_s", "{:.3f}", False),
        Row("  fresh connection → input reaches guest, p50 (ms)", "idle", "attach_ms_p50", "{:.2f}", False),
        Row(
            "  guest write → first byte on that connection, p50 (µs)",
            "idle",
            "first_byte_us_p50",
            "{:.0f}",
            False,
        ),
        Row(
            f"{plan.consoles:,} consoles asked for (unix-socket devices, telnet each): ports run",
            "consoles",
            "ports",
            "{:,.0f}",
            True,
        ),
        Row("  start → READY=1 (s)", "consoles", "ready_s", "{:.2f}", False),
        Row("  RSS (MiB)", "consoles", "rss_mib", "{:.1f}", False),
        Row("  RSS per port (KiB)", "consoles", "rss_kib_per_port", "{:.1f}", False),
        Row(f"  idle CPU over {2 * plan.idle_window_s:g} s (%)", "consoles", "idle_cpu_pct", "{:.2f}", False),
        Row("  idle wake-ups (context switches per s)", "consoles", "idle_wakeups_per_s", "{:.1f}", False),
        Row(
            "  guest write → first byte on a fresh telnet client, p50 (µs)",
            "consoles",
            "first_byte_us_p50",
            "{:.0f}",
            False,
        ),
        Row("  GET /metrics (ms)", "consoles", "metrics_scrape_ms", "{:.0f}", False),
        Row(
            f"{plan.sessions:,} telnet viewers: RSS per idle session (KiB)",
            "sessions_telnet",
            "kib_per_idle_session",
            "{:.1f}",
            False,
        ),
        Row(
            "  RSS per slow session at its buffer cap (100 sessions; KiB)",
            "sessions_telnet",
            "kib_per_slow_session",
            "{:.1f}",
            False,
        ),
        Row(
            "  kernel TCP memory per session after 4x its cap unread (KiB)",
            "sessions_telnet",
            "kernel_kib_per_session_4x_cap",
            "{:.0f}",
            False,
        ),
        Row(
            "  kernel TCP memory per slow session at its cap (KiB)",
            "sessions_telnet",
            "kernel_kib_per_slow_session",
            "{:.0f}",
            False,
        ),
        Row(
            f"{plan.sessions:,} WebSocket viewers: RSS per idle session (KiB)",
            "sessions_ws",
            "kib_per_idle_session",
            "{:.1f}",
            False,
        ),
        Row(
            "  RSS per slow session at its buffer cap (100 sessions; KiB)",
            "sessions_ws",
            "kib_per_slow_session",
            "{:.1f}",
            False,
        ),
        Row(
            "  kernel TCP memory per session after 4x its cap unread (KiB)",
            "sessions_ws",
            "kernel_kib_per_session_4x_cap",
            "{:.0f}",
            False,
        ),
        Row(
            "  kernel TCP memory per slow session at its cap (KiB)",
            "sessions_ws",
            "kernel_kib_per_slow_session",
            "{:.0f}",
            False,
        ),
    ]


def _cell(result: Metrics | None, row: Row, notes: list[str], target: str) -> tuple[str, float | None]:
    if result is None:
        return "-", None
    status = result.get("status")
    if status == "n/a":
        return "n/a", None
    if status != "ok":
        note = f"{target}, {row.scenario}: {result.get('reason', status)}"
        if note not in notes:
            notes.append(note)
        return f"failed[{notes.index(note) + 1}]", None
    value = result.get(row.key)
    if value is None:
        return "n/a", None
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-", None
    text = row.fmt.format(value)
    if result.get("exact") is False:
        note = f"{target}, {row.scenario}: NOT byte-exact: {result.get('detail', '')}"
        if note not in notes:
            notes.append(note)
        text += f" ✗[{notes.index(note) + 1}]"
    return text, float(value)


def render_markdown(results: dict[str, dict[str, Metrics]], meta: dict[str, Any], plan: Plan) -> str:
    present = [t for t in TARGET_ORDER if any(t in by_target for by_target in results.values())]
    labels = {"serialmuxd": "serialmuxd", "ser2net": "ser2net tuned", "socat": "socat", "pty": "raw PTY"}
    baselines = [t for t in present if t != DAEMON]
    header = [labels[t] for t in present]
    if DAEMON in present:
        header += [f"smd ÷ {labels[b]}" for b in baselines]
    lines = [
        "| metric | " + " | ".join(header) + " |",
        "|---|" + "---:|" * len(header),
    ]
    notes: list[str] = []
    for row in rows(plan):
        by_target = results.get(row.scenario)
        if by_target is None:
            continue
        cells: list[str] = []
        values: dict[str, float | None] = {}
        for target in present:
            text, value = _cell(by_target.get(target), row, notes, target)
            cells.append(text)
            values[target] = value
        if DAEMON in present:
            for base in baselines:
                ours, theirs = values.get(DAEMON), values.get(base)
                cells.append(f"{ours / theirs:.2f}x" if ours is not None and theirs else "")
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    used = ",".join(str(cpu) for cpu in meta.get("cpus_used", []))
    out = [
        f"## serialmuxd benchmark ({meta['mode']} run, {meta['date']})",
        "",
        f"Machine: {meta['cpu']}, {meta['cpus']} CPUs (used: {used}), "
        f"Linux {meta['kernel']}, Python {meta['python']}; "
        f"{meta['ser2net']}; {meta['socat']}; serialmuxd: {meta['serialmuxd']}.",
        f"Load average (1 min) at start/end: {meta['loadavg_start']} / {meta.get('loadavg_end', '?')}"
        " (other work on the machine adds noise, mostly to latencies).",
        f"Throughput, RTT and fan-out: median of {plan.repeat} interleaved repeat(s); every stream byte is "
        "checked with sha256. Ratios are serialmuxd ÷ baseline: above 1 is better for MiB/s, below 1 is "
        "better for µs, ms, s, %, MiB and CPU s/MiB.",
        "",
        *lines,
    ]
    if notes:
        out += ["", *[f"[{i}] {note}" for i, note in enumerate(notes, 1)]]
    out += [
        "",
        "Goals (same-run figures; the chart `latest.svg` shows the same):",
        "",
        goals.markdown(results),
    ]
    skipped = meta.get("unavailable") or {}
    for name, reason in skipped.items():
        out.append(f"- {name} not measured: {reason}")
    return "\n".join(out) + "\n"


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return f"{argv[0]} not found"
    text = (done.stdout or done.stderr).decode("utf-8", "replace").strip().splitlines()
    return text[0] if text else argv[0]


def _socat_version() -> str:
    try:
        done = subprocess.run(["socat", "-V"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "socat not found"
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith("socat version"):
            return line.split(" on ")[0]
    return "socat (unknown version)"


def machine_meta(mode: str, daemon: str) -> dict[str, Any]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "mode": mode,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "ser2net": _version(["ser2net", "-v"]),
        "socat": _socat_version(),
        "serialmuxd": daemon,
        "loadavg_start": _loadavg(),
    }


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


# -- main ----------------------------------------------------------------------------------------------------


def _raise_nofile() -> None:
    """1,000 ports need ~2,000 PTY fds here and as many in the relay; children inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _terminate_on_sigterm(signum: int, frame: FrameType | None) -> None:
    request_stop()
    raise SystemExit(128 + signum)  # unwinds through every ``finally``, which stops what we started


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (small sizes, no repeats)")
    parser.add_argument("--targets", default=",".join(TARGET_ORDER), help="comma list of %(default)s")
    parser.add_argument("--scenarios", default=",".join(SCENARIO_ORDER), help="comma list of %(default)s")
    parser.add_argument("--repeat", type=int, help="repeats of throughput/fan-out (default: 3, quick: 1)")
    parser.add_argument("--idle-ports", type=int, help="ports in the idle test (default: 1000, quick: 100)")
    parser.add_argument("--daemon-cmd", help='serialmuxd command, e.g. ".venv/bin/python -m serialmuxd"')
    parser.add_argument(
        "--wait-daemon", type=float, default=0.0, metavar="S", help="poll up to S seconds for the daemon"
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where latest.md/json go")
    parser.add_argument("--keep-logs", action="store_true", help="keep the relays' configs and logs")
    parser.add_argument(
        "--cpus",
        help="pin the bench and every relay to these CPUs, e.g. 0 or 2,3 (children inherit the affinity)",
    )
    args = parser.parse_args(argv)
    for option, allowed in (("targets", TARGET_ORDER), ("scenarios", SCENARIO_ORDER)):
        chosen = [x for x in getattr(args, option).split(",") if x]
        unknown = sorted(set(chosen) - set(allowed))
        if unknown:
            parser.error(f"unknown {option}: {', '.join(unknown)} (choose from {', '.join(allowed)})")
        setattr(args, option, [x for x in allowed if x in chosen])
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    base = QUICK if args.quick else FULL
    plan = base
    if args.repeat:
        plan = dataclasses.replace(plan, repeat=args.repeat)
    if args.idle_ports:
        plan = dataclasses.replace(plan, idle_ports=args.idle_ports)
    signal.signal(signal.SIGTERM, _terminate_on_sigterm)
    _raise_nofile()
    if args.cpus:
        os.sched_setaffinity(0, {int(cpu) for cpu in args.cpus.split(",")})
    workdir = make_workdir()
    try:
        daemon = Serialmuxd(workdir / "serialmuxd", args.daemon_cmd.split() if args.daemon_cmd else None)
        every: dict[str, Target] = {
            "serialmuxd": daemon,
            "ser2net": Ser2net(workdir / "ser2net"),
            "socat": Socat(workdir / "socat"),
            "pty": BarePty(workdir / "pty"),
        }
        unavailable: dict[str, str] = {}
        targets: list[Target] = []
        for name in args.targets:
            target = every[name]
            target.workdir.mkdir(parents=True, exist_ok=True)
            reason = target.available()
            deadline = time.monotonic() + (args.wait_daemon if name == DAEMON else 0)
            while reason is not None and time.monotonic() < deadline:
                time.sleep(5)
                reason = target.available()
            if reason is None:
                targets.append(target)
            else:
                unavailable[name] = reason
                print(f"{name}: not available: {reason}", file=sys.stderr)
        daemon_text = (
            f"{_version([*daemon.command, '--version'])} ({' '.join(daemon.command)})"
            if DAEMON not in unavailable and DAEMON in args.targets
            else unavailable.get(DAEMON, "not selected")
        )
        meta = machine_meta("quick" if args.quick else "full", daemon_text)
        meta["cpus_used"] = sorted(os.sched_getaffinity(0))
        meta["unavailable"] = unavailable
        meta["plan"] = dataclasses.asdict(plan)
        results = run_all(targets, args.scenarios, plan)
        meta["loadavg_end"] = _loadavg()
        report = render_markdown(results, meta, plan)
        print(report)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "latest.md").write_text(report)
        title = f"serialmuxd against its goals ({meta['mode']} run, {meta['date']})"
        (args.out_dir / "latest.svg").write_text(goals.svg(results, title))
        (args.out_dir / "latest.json").write_text(
            json.dumps({"meta": meta, "results": results}, indent=2) + "\n"
        )
        print(f"written: {args.out_dir}/latest.md, .json and .svg", file=sys.stderr)
        return 0
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        if args.keep_logs:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
