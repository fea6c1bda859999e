"""The four measurements.  Each starts its target fresh, measures, and stops everything it started.

A scenario returns a flat dict of numbers (and a few strings) for the report, or raises ``Unsupported``
(reported as n/a) or ``BenchError`` (reported as failed, with the reason).
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from serialmuxd.rlimits import BASE_DESCRIPTORS, CLIENT_HEADROOM

from . import procfs
from .targets import (
    HOST,
    PortPlan,
    Serialmuxd,
    StartOptions,
    Target,
    Unsupported,
    free_tcp_ports,
    stable_tcp_ports,
)
from .workload import (
    BenchError,
    Endpoint,
    GuestWriter,
    Pty,
    Stream,
    StreamReceiver,
    TcpEndpoint,
    TelnetClient,
    check_stop,
    drain,
    read_some,
    wait_readable,
    write_all,
)
from .wsclient import WsEndpoint

Metrics = dict[str, float | int | str | bool | None]
MIB = 1 << 20
START_TIMEOUT_S = 120.0
IDLE_TIMEOUT_S = 15.0  # a stream that makes no progress for this long has failed
DEFAULT_CLIENT_BUFFER = 256 * 1024  # serialmuxd's default client_buffer_bytes
SLOW_RCVBUF = 16 * 1024  # a slow viewer's socket receive buffer: the kernel hides little of its lag


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
                    if not getattr(endpoints[index], "closed_by_peer", True):
                        continue  # a WebSocket read that held only an event or part of a frame
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


def _ws_target(target: Target) -> Serialmuxd:
    if not isinstance(target, Serialmuxd):
        raise Unsupported("no WebSocket consoles")
    return target


def throughput(target: Target, stream: Stream, *, telnet: bool, ws: bool = False) -> Metrics:
    """Guest -> one client, byte-exact; MiB/s and the relay's CPU seconds per MiB."""
    if telnet and not target.telnet_mode:
        raise Unsupported("no telnet mode")
    if ws:
        _ws_target(target)
    pty = Pty.open()
    endpoints: list[Endpoint] = []
    writer: GuestWriter | None = None
    try:
        tcp_port, viewer_port, http_port = free_tcp_ports(3)
        options = StartOptions(telnet=telnet, http_port=http_port if ws else None)
        target.start([PortPlan(pty, tcp_port, viewer_port)], options, START_TIMEOUT_S)
        endpoints.append(_ws_target(target).connect_ws(0) if ws else target.connect_writer(0))
        receiver = StreamReceiver(stream, TelnetClient() if telnet else None)
        writer = GuestWriter(pty.master, stream)
        _pump(endpoints, [receiver], lambda: receiver.saw_sync, target, "the first SYNC line")
        writer.go()
        _pump(endpoints, [receiver], lambda: receiver.in_payload, target, "the GO line")
        cpu0 = _cpu(target)
        # An in-band notice in the payload: the daemon skipped this (slow) reader ahead; it cannot be done.
        _pump(endpoints, [receiver], lambda: receiver.done or receiver.notices > 0, target, "the payload")
        cpu1 = _cpu(target)
        if not receiver.done:
            raise BenchError(f"the client fell behind: {receiver.describe_failure()}")
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


class KeystrokeClient:
    """One interactive client for the RTT test: raw TCP, telnet (answers negotiation, un-escapes) or a
    WebSocket (binary frames).  ``receive(n)`` returns the next ``n`` guest bytes."""

    def __init__(self, endpoint: Endpoint, telnet: TelnetClient | None) -> None:
        self.endpoint = endpoint
        self._telnet = telnet
        self._fd = endpoint.fileno()
        self._pending = b""

    def send(self, data: bytes) -> None:
        self.endpoint.send(data)

    def _read(self, timeout_s: float) -> bytes | None:
        if not wait_readable(self._fd, timeout_s):
            return None
        data = self.endpoint.recv()
        if not data and getattr(self.endpoint, "closed_by_peer", True):
            raise BenchError("the relay closed the connection")
        if self._telnet is not None:
            data = self._telnet.feed(data)
            replies = self._telnet.take_replies()
            if replies:
                self.endpoint.send(replies)
        return data

    def receive(self, n: int, timeout_s: float = 5.0) -> bytes:
        got = self._pending
        while len(got) < n:
            data = self._read(timeout_s)
            if data is None:
                raise BenchError(f"timed out after {timeout_s:g} s waiting for the echo at the client")
            got += data
        self._pending = got[n:]
        return got[:n]

    def settle(self, quiet_s: float = 0.05) -> None:
        """Read (and answer negotiation) until nothing arrives for ``quiet_s``; drop what was read."""
        while self._read(quiet_s) is not None:
            pass
        self._pending = b""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.endpoint.close()


def keystroke_client(target: Target, pty: Pty, path: str) -> KeystrokeClient:
    """Connect an interactive client (``path``: raw, telnet or ws) to port 0 and wait until its input
    reaches the guest; nothing is pending on either side afterwards."""
    if path == "ws":
        client = KeystrokeClient(_ws_target(target).connect_ws(0), None)
    else:
        client = KeystrokeClient(target.connect_writer(0), TelnetClient() if path == "telnet" else None)
    try:
        client.settle()  # telnet: the negotiation is over before the first keystroke
        _attach(client.endpoint, pty.master)
        client.settle()
        return client
    except BaseException:
        client.close()
        raise


def rtt(target: Target, samples: int, warmup: int, path: str = "raw") -> Metrics:
    """Keystroke round trip: client -> relay -> guest, which echoes it -> relay -> client.  One in flight.

    ``path``: raw TCP, telnet or ws (WebSocket).  Also the relay's CPU time per keystroke over the measured
    samples (``/proc/PID/stat``: resolution one clock tick, hence many samples)."""
    if path == "telnet" and not target.telnet_mode:
        raise Unsupported("no telnet mode")
    if path == "ws":
        _ws_target(target)
    pty = Pty.open()
    client: KeystrokeClient | None = None
    try:
        tcp_port, viewer_port, http_port = free_tcp_ports(3)
        options = StartOptions(telnet=path == "telnet", http_port=http_port if path == "ws" else None)
        target.start([PortPlan(pty, tcp_port, viewer_port)], options, START_TIMEOUT_S)
        client = keystroke_client(target, pty, path)
        latencies_us: list[float] = []
        cpu0: float | None = None
        for i in range(warmup + samples):
            check_stop()
            if i == warmup:
                cpu0 = _cpu(target)
            key = bytes((0x61 + i % 26,))
            t0 = time.perf_counter_ns()
            client.send(key)
            got = read_some(pty.master, 5.0, "a keystroke at the guest")
            os.write(pty.master, got)
            back = client.receive(len(got))
            t1 = time.perf_counter_ns()
            if got != key or back != key:
                raise BenchError(f"sample {i}: sent {key!r}, guest got {got!r}, client got {back!r}")
            if i >= warmup:
                latencies_us.append((t1 - t0) / 1000)
        cpu1 = _cpu(target)
        return {
            "samples": samples,
            "p50_us": _percentile(latencies_us, 50),
            "p99_us": _percentile(latencies_us, 99),
            "mean_us": statistics.fmean(latencies_us),
            "max_us": max(latencies_us),
            "cpu_us_per_key": None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / samples * 1e6,
        }
    finally:
        if client is not None:
            client.close()
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
        plans = [PortPlan(pty, port) for pty, port in zip(ptys, stable_tcp_ports(nports), strict=True)]
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


def _ws_abs_check(
    expected: bytes, base: int, hello: int, raw: bytes, events: list[tuple[int, dict[str, object]]], end: int
) -> tuple[bool, int, str]:
    """Check a resynced viewer: its bytes, placed at their stream offsets by its ``missed`` notices, must
    equal the stream (``expected`` starts at offset ``base``), and bytes + missed must cover ``hello`` ..
    ``end`` exactly.  Returns (ok, bytes missed, what went wrong)."""
    at, pos, missed = hello, 0, 0
    for received_before, event in events:
        if event.get("type") != "notice" or event.get("kind") != "missed":
            continue
        count, offset = event.get("missed"), event.get("offset")
        if not isinstance(count, int) or not isinstance(offset, int):
            return False, missed, f"missed notice without counts: {event}"
        segment = raw[pos:received_before]
        if expected[at - base : at - base + len(segment)] != segment:
            return False, missed, f"bytes before offset {at + len(segment)} differ from the stream"
        at += len(segment)
        if at + count != offset:
            return False, missed, f"notice says {count} missed from {at}, but resumes at {offset}"
        missed += count
        at, pos = offset, received_before
    segment = raw[pos:]
    if expected[at - base : at - base + len(segment)] != segment:
        return False, missed, f"bytes after offset {at} differ from the stream"
    if at + len(segment) != end:
        return False, missed, f"ends at offset {at + len(segment)}, the stream at {end}"
    return True, missed, ""


def _missed(ep: WsEndpoint) -> int:
    """Bytes the daemon said this WebSocket viewer missed (its ``missed`` notices)."""
    total = 0
    for _, event in ep.events:
        count = event.get("missed")
        if event.get("type") == "notice" and event.get("kind") == "missed" and isinstance(count, int):
            total += count
    return total


def fanout_ws(
    target: Target, stream: Stream, viewers: int, slow: int, rate_bytes_per_s: float | None = None
) -> Metrics:
    """Guest -> ``viewers`` WebSocket viewers at the daemon's default per-session buffer: the fast ones
    (read all the time) must be byte-exact; ``slow`` of them read nothing until the fast ones are done, so
    they fall behind the buffer and must be resynced: every byte they get at its right offset and the
    ``missed`` notices' counts closing every gap exactly.  ``rate_bytes_per_s`` paces the guest so that the
    bench's one thread can keep up with every fast viewer at the default buffer (the daemon does not slow
    the guest for a slow reader: unpaced, the bench itself would be one)."""
    daemon = _ws_target(target)
    pty = Pty.open()
    fast_eps: list[WsEndpoint] = []
    slow_eps: list[WsEndpoint] = []
    writer: GuestWriter | None = None
    try:
        tcp_port, http_port = free_tcp_ports(2)
        options = StartOptions(http_port=http_port, client_buffer_bytes=DEFAULT_CLIENT_BUFFER)
        daemon.start([PortPlan(pty, tcp_port)], options, START_TIMEOUT_S)
        for _ in range(viewers - slow):
            check_stop()
            fast_eps.append(daemon.connect_ws(0, "ro"))
        for _ in range(slow):
            slow_eps.append(daemon.connect_ws(0, "ro", rcvbuf=SLOW_RCVBUF))
        receivers = [StreamReceiver(stream) for _ in fast_eps]
        tap = bytearray()  # viewer 0's bytes from its hello on, to know the stream before the payload
        original_recv = fast_eps[0].recv

        def tapped() -> bytes:
            data = original_recv()
            if len(tap) < MIB:
                tap.extend(data)
            return data

        fast_eps[0].recv = tapped  # type: ignore[method-assign]
        writer = GuestWriter(pty.master, stream, rate_bytes_per_s=rate_bytes_per_s)
        _pump(fast_eps, receivers, lambda: all(r.saw_sync for r in receivers), target, "SYNC on every viewer")
        writer.go()
        _pump(fast_eps, receivers, lambda: any(r.in_payload for r in receivers), target, "the GO line")
        cpu0 = _cpu(target)

        def finished() -> bool:  # done, or skipped ahead (then it can never be done: counted as inexact)
            return all(r.done or _missed(ep) for r, ep in zip(receivers, fast_eps, strict=True))

        _pump(fast_eps, receivers, finished, target, "every viewer's payload")
        cpu1 = _cpu(target)
        skipped = [i for i, ep in enumerate(fast_eps) if _missed(ep)]
        if skipped:
            i = skipped[0]
            raise BenchError(
                f"{len(skipped)} of {len(fast_eps)} fast viewers fell behind and were skipped ahead (viewer "
                f"{i}: {receivers[i].describe_failure()}, missed {_missed(fast_eps[i])})"
            )
        t_go = min(r.t_go for r in receivers)
        t_done = max(r.t_done for r in receivers)
        first = fast_eps[0]
        base = _hello_offset(first)
        end = base + first.received
        prefix = bytes(tap[: first.received - len(stream.data)])
        expected = prefix + stream.data
        # Now the slow viewers read everything they are sent, until they account for the whole stream.
        raws = [bytearray() for _ in slow_eps]
        deadline = time.perf_counter() + 60

        def accounted(i: int) -> int:
            ep = slow_eps[i]
            return _hello_offset(ep) + ep.received + _missed(ep)

        pending = set(range(len(slow_eps)))
        while pending and time.perf_counter() < deadline:
            check_stop()
            for i in list(pending):
                ep = slow_eps[i]
                while wait_readable(ep.fileno(), 0):
                    data = ep.recv()
                    raws[i] += data
                    if not data and ep.closed_by_peer:
                        raise BenchError(f"slow viewer {i} closed by the daemon")
                if accounted(i) >= end:
                    pending.discard(i)
            if pending:
                wait_readable(slow_eps[min(pending)].fileno(), 0.05)
        slow_ok, slow_missed, problems = 0, [], []
        for i, ep in enumerate(slow_eps):
            ok, missed, why = _ws_abs_check(expected, base, _hello_offset(ep), bytes(raws[i]), ep.events, end)
            slow_missed.append(missed)
            slow_ok += ok
            if not ok:
                problems.append(f"slow viewer {i}: {why}")
        delivered_mib = len(fast_eps) * len(stream.data) / MIB
        inexact = [i for i, r in enumerate(receivers) if not r.exact]
        detail = [f"viewer {inexact[0]}: {receivers[inexact[0]].describe_failure()}"] if inexact else []
        return {
            "viewers": viewers,
            "slow_viewers": slow,
            "mib_per_viewer": len(stream.data) / MIB,
            "seconds": t_done - t_go,
            "aggregate_mib_s": delivered_mib / (t_done - t_go),
            "guest_rate_mib_s": None if rate_bytes_per_s is None else rate_bytes_per_s / MIB,
            "cpu_s_per_mib_delivered": None
            if cpu0 is None or cpu1 is None
            else (cpu1 - cpu0) / delivered_mib,
            "slow_resynced_exactly": slow_ok,
            "slow_missed_min": min(slow_missed) if slow_missed else 0,
            "slow_missed_max": max(slow_missed) if slow_missed else 0,
            "exact": not inexact and slow_ok == slow and all(m > 0 for m in slow_missed),
            "inexact_viewers": len(inexact),
            "detail": "; ".join(detail + problems)
            + ("" if all(m > 0 for m in slow_missed) else "; a slow viewer never fell behind"),
        }
    finally:
        _close_all([*fast_eps, *slow_eps])
        if writer is not None:
            writer.stop()
        target.stop()
        pty.close()


def _hello_offset(ep: WsEndpoint) -> int:
    for _, event in ep.events:
        if event.get("type") == "hello":
            offset = event.get("offset")
            if isinstance(offset, int):
                return offset
    raise BenchError("no hello event with an offset on a WebSocket console")


def _serialmuxd(target: Target, what: str) -> Serialmuxd:
    if not isinstance(target, Serialmuxd):
        raise Unsupported(what)
    return target


def _fitting_ports(requested: int) -> tuple[int, int]:
    """How many ports (telnet listener + unix-socket device each) fit in this machine's hard open-file
    limit with the daemon's own descriptors, the HTTP listener and a reserve for clients; and that limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fit = (hard - BASE_DESCRIPTORS - 1 - CLIENT_HEADROOM) // 2
    return min(requested, fit), hard


def _refusal_of(target: Serialmuxd, count: int) -> str:
    """Start the daemon with ``count`` ports that cannot fit: it must exit 1 and say why (returned)."""
    plans = [PortPlan(None, 20000 + i % 40000, unix_path=f"/nonexistent/c{i}.sock") for i in range(count)]
    config = target.workdir / "too-many.toml"
    config.write_text(target.toml(plans, StartOptions()))
    done = subprocess.run(
        [*target.command, "run", "--config", str(config)], capture_output=True, timeout=120, check=False
    )
    text = (done.stderr or done.stdout).decode("utf-8", "replace").strip()
    if done.returncode != 1 or "open-file limit" not in text:
        raise BenchError(f"{count} ports over the limit: exit {done.returncode}, {text[-300:]!r}")
    return text.splitlines()[-1]


def consoles(target: Target, requested: int, window_s: float, samples: int) -> Metrics:
    """Many consoles on one daemon: ``requested`` ports on unix-socket devices (no PTY: the kernel has
    4,096), each with a telnet listener, plus /metrics.  Start -> READY, RSS, idle CPU and wake-ups, a
    fresh telnet client's first guest byte on random ports, and a /metrics scrape."""
    daemon = _serialmuxd(target, "one daemon with unix-socket devices and /metrics: serialmuxd only")
    count, hard = _fitting_ports(requested)
    refusal = _refusal_of(daemon, requested) if count < requested else ""
    tcp_ports = stable_tcp_ports(count + 1)  # none the kernel would hand to a connection meanwhile
    guest_dir = Path(tempfile.mkdtemp(prefix="smd-c-"))
    guests: list[socket.socket] = []
    endpoints: list[Endpoint] = []
    try:
        plans = []
        for i in range(count):
            guest = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            guest.bind(str(guest_dir / f"{i}.sock"))
            guest.listen(1)  # the daemon's connection waits in the backlog until a sample accepts it
            guests.append(guest)
            plans.append(PortPlan(None, tcp_ports[i], unix_path=str(guest_dir / f"{i}.sock")))
        options = StartOptions(telnet=True, http_port=tcp_ports[-1])
        times = daemon.start(plans, options, START_TIMEOUT_S)
        pid = daemon.pid
        assert pid is not None
        time.sleep(2.0)  # start-up work (every device connecting) settles before anything counts as idle
        rss = procfs.rss_bytes(pid)
        cpu0, switches0, t0 = procfs.cpu_seconds(pid), procfs.context_switches(pid), time.perf_counter()
        time.sleep(window_s)
        cpu1, switches1, t1 = procfs.cpu_seconds(pid), procfs.context_switches(pid), time.perf_counter()
        daemon.check_running()
        first_byte_us: list[float] = []
        for index in random.Random(11).sample(range(count), min(samples, count)):
            check_stop()
            client = KeystrokeClient(daemon.connect_writer(index), TelnetClient())
            endpoints.append(client.endpoint)
            client.settle()  # negotiation and the attach notice
            guest_conn, _ = guests[index].accept()
            try:
                t_write = time.perf_counter_ns()
                guest_conn.sendall(b"Z")
                while b"Z" not in client.receive(1):
                    pass
                first_byte_us.append((time.perf_counter_ns() - t_write) / 1000)
            finally:
                guest_conn.close()
            client.close()
            endpoints.remove(client.endpoint)
        scrape_ms: list[float] = []
        size = 0
        for _ in range(3):
            t_scrape = time.perf_counter()
            with urllib.request.urlopen(f"http://{HOST}:{tcp_ports[-1]}/metrics", timeout=60) as response:
                size = len(response.read())
            scrape_ms.append((time.perf_counter() - t_scrape) * 1000)
        return {
            "ports_requested": requested,
            "ports": count,
            "hard_nofile": hard,
            "refusal": refusal,
            "ready_s": times.ready_s,
            "listen_s": times.listen_s,
            "rss_mib": rss / MIB,
            "rss_kib_per_port": rss / 1024 / count,
            "idle_cpu_pct": (cpu1 - cpu0) / (t1 - t0) * 100,
            "idle_wakeups_per_s": (switches1 - switches0) / (t1 - t0),
            "first_byte_us_p50": statistics.median(first_byte_us),
            "first_byte_us_max": max(first_byte_us),
            "metrics_scrape_ms": statistics.median(scrape_ms),
            "metrics_kib": size / 1024,
        }
    finally:
        _close_all(endpoints)
        target.stop()
        for guest in guests:
            guest.close()
        shutil.rmtree(guest_dir, ignore_errors=True)


def _viewers(daemon: Serialmuxd, kind: str, count: int, viewer_port: int) -> list[Endpoint]:
    """``count`` read-only sessions (telnet or WebSocket) with 16 KiB receive buffers, each attached."""
    clients: list[Endpoint] = []
    for _ in range(count):
        check_stop()
        if kind == "ws":
            clients.append(daemon.connect_ws(0, "ro", rcvbuf=SLOW_RCVBUF))
        else:
            clients.append(TcpEndpoint(HOST, viewer_port, rcvbuf=SLOW_RCVBUF))
    for client in clients:  # every session attached (its hello or attach notice arrived)
        if isinstance(client, WsEndpoint):
            client.parse_buffered()  # the hello may have come with the handshake's answer
            if any(event.get("type") == "hello" for _, event in client.events):
                continue
        if not wait_readable(client.fileno(), 10.0):
            raise BenchError("a session was never attached")
        client.recv()
    return clients


def _burst(master: int, nbytes: int) -> None:
    line = b"x" * 4095 + b"\n"
    for _ in range(nbytes // len(line)):
        write_all(master, line)


def _memory_run(kind: str, count: int, burst: int, daemon: Serialmuxd) -> tuple[float, float, float, float]:
    """Start, attach ``count`` viewers, then ``burst`` guest bytes nobody reads.  Returns (RSS before the
    sessions, after attaching, after the burst, kernel TCP memory growth over the burst), in bytes."""
    pty = Pty.open()
    clients: list[Endpoint] = []
    try:
        tcp_port, viewer_port, http_port = free_tcp_ports(3)
        options = StartOptions(
            telnet=kind == "telnet",
            http_port=http_port if kind == "ws" else None,
            client_buffer_bytes=DEFAULT_CLIENT_BUFFER,
            max_sessions=count + 10,
        )
        daemon.start([PortPlan(pty, tcp_port, viewer_port)], options, START_TIMEOUT_S)
        pid = daemon.pid
        assert pid is not None
        time.sleep(1.0)
        rss0 = procfs.rss_bytes(pid)
        clients = _viewers(daemon, kind, count, viewer_port)
        time.sleep(1.0)
        rss_idle, kernel0 = procfs.rss_bytes(pid), procfs.tcp_kernel_bytes()
        _burst(pty.master, burst)
        time.sleep(2.0)
        rss_slow, kernel1 = procfs.rss_bytes(pid), procfs.tcp_kernel_bytes()
        daemon.check_running()
        return rss0, rss_idle, rss_slow, kernel1 - kernel0
    finally:
        _close_all(clients)
        daemon.stop()
        pty.close()


def sessions_memory(target: Target, count: int, kind: str, at_cap: int = 100) -> Metrics:
    """Memory per attached session (telnet or WebSocket viewers on one port, 16 KiB receive buffers).

    1. ``count`` idle sessions: RSS growth ÷ count.  Then 4x ``client_buffer_bytes`` (the daemon's default)
       of guest output nobody reads: on Linux the kernel's send buffer of each connection grows and takes
       all of it (tcp_wmem allows up to 4 MiB): kernel TCP memory ÷ count.
    2. A fresh daemon with ``at_cap`` sessions and 32x the cap of unread output: the kernel buffers fill,
       then the daemon's own buffer reaches the cap and the session is paused (it is resumed from the ring
       later, told what it missed).  RSS growth over idle ÷ at_cap: what a slow session costs in the
       daemon at its cap.  (Fewer sessions here: 1,000 x 4 MiB would push the machine's TCP memory into
       pressure.)"""
    daemon = _serialmuxd(target, "session memory is measured on serialmuxd")
    cap = DEFAULT_CLIENT_BUFFER
    rss0, rss_idle, rss_slow, kernel = _memory_run(kind, count, 4 * cap, daemon)
    _, cap_idle, cap_slow, cap_kernel = _memory_run(kind, at_cap, 32 * cap, daemon)
    return {
        "sessions": count,
        "kind": kind,
        "rss_before_mib": rss0 / MIB,
        "rss_idle_mib": rss_idle / MIB,
        "kib_per_idle_session": (rss_idle - rss0) / 1024 / count,
        "kib_per_session_4x_cap": (rss_slow - rss_idle) / 1024 / count,
        "kernel_kib_per_session_4x_cap": kernel / 1024 / count,
        "sessions_at_cap": at_cap,
        "kib_per_slow_session": (cap_slow - cap_idle) / 1024 / at_cap,
        "kernel_kib_per_slow_session": cap_kernel / 1024 / at_cap,
        "client_buffer_kib": cap / 1024,
    }
