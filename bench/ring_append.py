"""Micro-benchmark of ``RingBuffer.append``: 64 KiB chunks into a 1 MiB ring (timeit, best of 5).

Run: ``.venv/bin/python bench/ring_append.py``.  The number is quoted in ``serialmuxd/core/ring.py``.
"""

from __future__ import annotations

import os
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serialmuxd.core.ring import RingBuffer

CHUNK = 64 * 1024
CAPACITY = 1 << 20
APPENDS_PER_RUN = 2000  # 125 MiB per run; each append after the 16th overwrites the oldest 64 KiB


def main() -> None:
    ring = RingBuffer(CAPACITY)
    # An odd chunk size first, so appends straddle the wrap point instead of always landing aligned.
    ring.append(b"x" * 1000)
    chunk = os.urandom(CHUNK)
    runs = timeit.repeat(lambda: ring.append(chunk), number=APPENDS_PER_RUN, repeat=5)
    best = min(runs)
    per_append_us = best / APPENDS_PER_RUN * 1e6
    mib_s = APPENDS_PER_RUN * CHUNK / (1 << 20) / best
    print(f"append: {per_append_us:.2f} us per 64 KiB chunk, {mib_s:,.0f} MiB/s ({mib_s / 1024:.1f} GiB/s)")
    read_runs = timeit.repeat(lambda: ring.read(ring.start), number=200, repeat=5)
    print(f"read of the whole 1 MiB ring: {min(read_runs) / 200 * 1e6:.1f} us")


if __name__ == "__main__":
    main()
