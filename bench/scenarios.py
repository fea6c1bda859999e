"""The four measurements.  Each starts its target fresh, measures, and stops everything it started.

A scenario returns a flat dict of numbers (and a few strings) for the report, or raises ``Unsupported``
(reported as n/a) or ``BenchError`` (reported as failed, with the reason).
"""

from __future__ import annotations

import contextlib
import os
import random
import selectors
import statistics
import time
from collections.abc import Callable, Sequence

from . import procfs
from .targets import PortPlan, StartOptions, Target, Unsupported, free_tcp_ports
from .workload import (
    BenchError,
    Endpoint,
    GuestWriter,
    Pty,
    Stream,
    StreamReceiver,
    TelnetClient,
    check_stop,
    drain,
    read_some,
)

Metrics = dict[str, float | int | str | bool | None]
MIB = 1 << 20
START_TIMEOUT_S = 120.0
IDLE_TIMEOUT_S = 15.0  # a stream that makes no progress for this long has failed


def _cpu(target: Target) -> float | None:
    pid = target.pid
    return procfs.cpu_seconds(pid) if pid is not None else None


def _pump(
    endpoints: Sequence[Endpoint],
    receivers: Sequence[StreamReceiver],
    until: Callable[[], bool],
    target: Target,
    what: str,
) -> None:
    """Read every endpoint into its receiver until ``until()``; fail after IDLE_TIMEOUT_S without progress."""
    selector = selectors.DefaultSelector()
    try:
        for index, endpoint in enumerate(endpoints):
            selector.register(endpoint.fileno(), selectors.EVENT_READ, index)
        last_progress = time.perf_counter()
        while not until():
            check_stop()
            events = selector.select(0.5)
            now = time.perf_counter()
            for key, _ in events:
                index = key.data
                assert isinstance(index, int)
                data = endpoints[index].recv()
                if not data:
                    raise BenchError(f"connection {index} closed by the relay while waiting for {what}")
                replies = receivers[index].feed(data, now)
                if replies:
                    endpoints[index].send(replies)
                last_progress = now
            if not events:
                target.check_running()
                if now - last_progress > IDLE_TIMEOUT_S:
                    raise BenchError(f"no data for {IDLE_TIMEOUT_S:g} s while waiting for {what}")
    finally:
        selector.close()


def _close_all(endpoints: Sequence[Endpoint]) -> None:
    for endpoint in endpoints:
        with contextlib.suppress(OSError):
            endpoint.close()


def throughput(target: Target, stream: Stream, *, telnet: bool) -> Metrics:
    """Guest -> one client, byte-exact; MiB/s and the relay's CPU seconds per MiB."""
    if telnet and not target.telnet_mode:
        raise Unsupported("no telnet mode")
    pty = Pty.open()
    endpoints: list[Endpoint] = []
    writer: GuestWriter | None = None
    try:
        tcp_port, viewer_port = free_tcp_ports(2)
        target.start([PortPlan(pty, tcp_port, viewer_port)], StartOptions(telnet=telnet), START_TIMEOUT_S)
        endpoints.append(target.connect_writer(0))
        receiver = StreamReceiver(stream, TelnetClient() if telnet else None)
        writer = GuestWriter(pty.master, stream)
        _pump(endpoints, [receiver], lambda: receiver.saw_sync, target, "the first SYNC line")
        writer.go()
        _pump(endpoints, [receiver], lambda: receiver.in_payload, target, "the GO line")
        cpu0 = _cpu(target)
        _pump(endpoints, [receiver], lambda: receiver.done, target, "the payload")
        cpu1 = _cpu(target)
        seconds = receiver.t_done - receiver.t_go
        mib = len(stream.data) / MIB
        return {
            "mib": mib,
            "seconds": seconds,
            "mib_s": mib / seconds,
            "cpu_s_per_mib": None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / mib,
            "exact": receiver.exact,
            "detail": "" if receiver.exact else receiver.describe_failure(),
        }
    finally:
        _close_all(endpoints)
        if writer is not None:
            writer.stop()
        target.stop()
        pty.close()


def fanout(target: Target, stream: Stream, viewers: int) -> Metrics:
    """Guest -> ``viewers`` read-only clients at once; aggregate MiB/s and whether every viewer is exact."""
    if not target.fanout:
        raise Unsupported("cannot serve several clients from one port")
    pty = Pty.open()
    endpoints: list[Endpoint] = []
    writer: GuestWriter | None = None
    try:
        tcp_port, viewer_port = free_tcp_ports(2)
        # serialmuxd never slows the guest for a slow reader: it skips ahead (with a notice) once a session
        # is more than client_buffer_bytes behind.  The bench's single-threaded reader of N sockets is such
        # a slow reader, so give every session room for the whole payload; then byte-exactness is meaningful.
        options = StartOptions(
            client_buffer_bytes=min(64 * MIB, max(4 * MIB, 2 * len(stream.data))),
            max_connections=viewers + 1,
        )
        target.start([PortPlan(pty, tcp_port, viewer_port)], options, START_TIMEOUT_S)
        for _ in range(viewers):
            check_stop()
            endpoints.append(target.connect_viewer(0))
        receivers = [StreamReceiver(stream) for _ in range(viewers)]
        writer = GuestWriter(pty.master, stream)
        _pump(
            endpoints, receivers, lambda: all(r.saw_sync for r in receivers), target, "SYNC on every viewer"
        )
        writer.go()
        _pump(endpoints, receivers, lambda: any(r.in_payload for r in receivers), target, "the GO line")
        cpu0 = _cpu(target)
        _pump(endpoints, receivers, lambda: all(r.done for r in receivers), target, "every viewer's payload")
        cpu1 = _cpu(target)
        t_go = min(r.t_go for r in receivers)
        t_done = max(r.t_done for r in receivers)
        delivered_mib = viewers * len(stream.data) / MIB
        inexact = [i for i, r in enumerate(receivers) if not r.exact]
        return {
            "viewers": viewers,
            "mib_per_viewer": len(stream.data) / MIB,
            "seconds": t_done - t_go,
            "aggregate_mib_s": delivered_mib / (t_done - t_go),
            "cpu_s_per_mib_delivered": None
            if cpu0 is None or cpu1 is None
            else (cpu1 - cpu0) / delivered_mib,
            "exact": not inexact,
            "inexact_viewers": len(inexact),
            "detail": f"viewer {inexact[0]}: {receivers[inexact[0]].describe_failure()}" if inexact else "",
        }
    finally:
        _close_all(endpoints)
        if writer is not None:
            writer.stop()
        target.stop()
        pty.close()


def _attach(endpoint: Endpoint, master: int) -> float:
    """Send b"!" until it reaches the guest (proof that the relay has opened the device and routes input).

    Returns the ``perf_counter`` time at which it arrived.
    """
    deadline = time.perf_counter() + 10.0
    seen = b""
    while b"!" not in seen:
        if time.perf_counter() > deadline:
            raise BenchError("input from a fresh client never reached the guest")
        endpoint.send(b"!")
        try:
            seen += read_some(master, 0.2, "input at the guest")
        except BenchError:
            continue
    arrived = time.perf_counter()
    time.sleep(0.02)
    drain(master)  # retries that arrived late
    return arrived


def _percentile(values: Sequence[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def rtt(target: Target, samples: int, warmup: int) -> Metrics:
    """Keystroke round trip: client -> relay -> guest, which echoes it -> relay -> client.  One in flight."""
    pty = Pty.open()
    endpoints: list[Endpoint] = []
    try:
        tcp_port, viewer_port = free_tcp_ports(2)
        target.start([PortPlan(pty, tcp_port, viewer_port)], StartOptions(), START_TIMEOUT_S)
        endpoint = target.connect_writer(0)
        endpoints.append(endpoint)
        _attach(endpoint, pty.master)
        fd = endpoint.fileno()
        time.sleep(0.05)
        drain(fd)  # anything the relay sent on attach (none expected)
        latencies_us: list[float] = []
        for i in range(warmup + samples):
            check_stop()
            key = bytes((0x61 + i % 26,))
            t0 = time.perf_counter_ns()
            endpoint.send(key)
            got = read_some(pty.master, 5.0, "a keystroke at the guest")
            os.write(pty.master, got)
            back = b""
            while len(back) < len(got):
                back += read_some(fd, 5.0, "the echo at the client")
            t1 = time.perf_counter_ns()
            if got != key or back != key:
                raise BenchError(f"sample {i}: sent {key!r}, guest got {got!r}, client got {back!r}")
            if i >= warmup:
                latencies_us.append((t1 - t0) / 1000)
        return {
            "samples": samples,
            "p50_us": _percentile(latencies_us, 50),
            "p99_us": _percentile(latencies_us, 99),
            "mean_us": statistics.fmean(latencies_us),
            "max_us": max(latencies_us),
        }
    finally:
        _close_all(endpoints)
        target.stop()
        pty.close()


def idle_ports(target: Target, nports: int, window_s: float, fresh_samples: int) -> Metrics:
    """Many idle ports: start time, RSS, idle CPU, and a fresh connection's attach and first-byte times."""
    if not target.idle_ports:
        raise Unsupported("one port per process")
    ptys: list[Pty] = []
    endpoints: list[Endpoint] = []
    try:
        for _ in range(nports):
            ptys.append(Pty.open())
        plans = [PortPlan(pty, port) for pty, port in zip(ptys, free_tcp_ports(nports), strict=True)]
        times = target.start(plans, StartOptions(), START_TIMEOUT_S)
        pid = target.pid
        assert pid is not None
        time.sleep(1.0)  # let start-up work finish before calling anything idle
        rss_idle = procfs.rss_bytes(pid)
        cpu0, t0 = procfs.cpu_seconds(pid), time.perf_counter()
        time.sleep(window_s)
        cpu1, t1 = procfs.cpu_seconds(pid), time.perf_counter()
        target.check_running()

        attach_ms: list[float] = []
        first_byte_us: list[float] = []
        for index in random.Random(7).sample(range(nports), min(fresh_samples, nports)):
            check_stop()
            master = ptys[index].master
            t_connect = time.perf_counter()
            endpoint = target.connect_writer(index)
            endpoints.append(endpoint)
            attach_ms.append((_attach(endpoint, master) - t_connect) * 1000)
            fd = endpoint.fileno()
            drain(fd)
            t_write = time.perf_counter_ns()
            os.write(master, b"Z")
            seen = b""
            while b"Z" not in seen:  # skips a leading notice, if the relay sends one
                seen += read_some(fd, 5.0, "the guest's byte on a fresh connection")
            first_byte_us.append((time.perf_counter_ns() - t_write) / 1000)
            endpoint.close()
            endpoints.remove(endpoint)
        return {
            "ports": nports,
            "listen_s": times.listen_s,
            "ready_s": times.ready_s,
            "ports_not_listening_at_ready": getattr(target, "ports_missing_at_ready", None),
            "rss_mib": rss_idle / MIB,
            "rss_after_connects_mib": procfs.rss_bytes(pid) / MIB,
            "idle_cpu_pct": (cpu1 - cpu0) / (t1 - t0) * 100,
            "attach_ms_p50": statistics.median(attach_ms),
            "attach_ms_max": max(attach_ms),
            "first_byte_us_p50": statistics.median(first_byte_us),
            "first_byte_us_max": max(first_byte_us),
        }
    finally:
        _close_all(endpoints)
        target.stop()
        for pty in ptys:
            pty.close()
