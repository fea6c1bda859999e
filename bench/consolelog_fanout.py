"""What a console log costs the fan-out: ``PortHub.device_data_received`` with [logs] off and on.

Two numbers per chunk size (64 B keystroke echo, 1 KiB and 4 KiB reads of a busy boot), best of 5:

* loop: the event loop's time per chunk (ring, observers, no sessions), with the writer thread kept out
  of the way, i.e. what the observer itself adds (one deque append and a time() call);
* end to end: MiB/s through the hub while the real writer thread writes every byte to a real file in a
  temporary directory (GIL contention included), and how many bytes it had to drop (should be 0).

Run: ``.venv/bin/python bench/consolelog_fanout.py`` (add ``--timestamps`` for stamped logs).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serialmuxd.config import DeviceKind, DeviceSpec, LogSettings, PortConfig
from serialmuxd.hub import PortHub
from serialmuxd.obs.consolelog import ConsoleLogWriter

SIZES = (64, 1024, 4096)
TOTAL_BYTES = 16 * 1024 * 1024  # per end-to-end run


def _chunk(size: int) -> bytes:
    line = b"[    1.234567] usb 1-1: new high-speed USB device number 2 using ehci-pci\r\n"
    return (line * (size // len(line) + 1))[:size]


def _hub(log: ConsoleLogWriter | None, directory: Path, timestamps: bool) -> PortHub:
    cfg = PortConfig(name="bench", device=DeviceSpec(DeviceKind.EXEC, "true"))
    settings = LogSettings(directory, rotate_bytes=64 << 20, keep=1, timestamps=timestamps, boot_bytes=0)
    port_log = None if log is None else log.port_log("bench", settings, 0)
    return PortHub(cfg, None, console_log=port_log)


async def main(timestamps: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        print(f"timestamps: {timestamps}")
        for size in SIZES:
            chunk = _chunk(size)
            off = _hub(None, directory, timestamps)
            # Loop side only: the writer exists but its thread is not started, and the queue is emptied
            # between runs, so only the observer's own work is measured.
            writer = ConsoleLogWriter(limit=1 << 40)
            on = _hub(writer, directory, timestamps)
            n = max(2000, 2_000_000 // size)

            def run(h: PortHub, w: ConsoleLogWriter | None, n: int = n, chunk: bytes = chunk) -> None:
                if w is not None:
                    w.queue.clear()
                for _ in range(n):
                    h.device_data_received(chunk)

            # Interleaved, best of 7 each: the machine is shared, so take what each got at its best.
            t_off, t_on = float("inf"), float("inf")
            for _ in range(7):
                t_off = min(t_off, timeit.timeit(lambda h=off: run(h, None), number=1))  # type: ignore[misc]
                t_on = min(t_on, timeit.timeit(lambda h=on, w=writer: run(h, w), number=1))  # type: ignore[misc]
            writer.queue.clear()
            us_off, us_on = t_off / n * 1e6, t_on / n * 1e6
            print(f"{size:5d} B chunks  loop per chunk: off {us_off:5.2f} us, on {us_on:5.2f} us")
            # End to end, the real thread writing the real file, against the same run without a log.
            count = TOTAL_BYTES // size
            mib = count * size / (1 << 20)
            for logged in (False, True):
                writer = ConsoleLogWriter()
                writer.start()
                hub = _hub(writer if logged else None, directory, timestamps)
                start = time.perf_counter()
                for i in range(count):
                    hub.device_data_received(chunk)
                    if i % 256 == 0:
                        await asyncio.sleep(0)  # a real loop yields between reads
                loop_s = time.perf_counter() - start
                lost = 0
                if hub.console_log is not None:
                    await hub.console_log.close(60)
                    lost = hub.console_log.bytes_lost
                total_s = time.perf_counter() - start
                await writer.stop()
                print(
                    f"      end to end, log {'on ' if logged else 'off'}: {mib / loop_s:6.1f} MiB/s through "
                    f"the hub, everything written after {total_s:.2f} s, lost {lost}"
                )
            (directory / "bench.log").unlink(missing_ok=True)
            (directory / "bench.log.idx").unlink(missing_ok=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timestamps", action="store_true")
    asyncio.run(main(parser.parse_args().timestamps))
