"""Time as the hub's parts receive it: injected, so tests drive it instead of sleeping.

``clock`` (monotonic seconds, for rates and deadlines), ``wall`` (seconds since the epoch, for people) and
``Scheduler`` (run a callback later, e.g. the ``ask`` deadline or the next paced chunk) are passed in; the
defaults are the event loop's.  A unit test passes a fake clock and a scheduler that fires on demand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


Scheduler = Callable[[float, Callable[[], None]], Timer]


def loop_scheduler(delay_s: float, callback: Callable[[], None]) -> Timer:
    return asyncio.get_running_loop().call_later(delay_s, callback)
