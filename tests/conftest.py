"""Run the tests that exercise real sockets, PTYs and devices on both event loops.

The daemon runs on uvloop when it is installed (the ``fast`` extra, which ``./dev`` installs), and uvloop's
transports differ from asyncio's in small ways (class hierarchy, accepted keyword arguments), so the real-path
tests run on both.  Pure policy tests run on asyncio's loop only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import ModuleType

import pytest

uvloop: ModuleType | None
try:
    import uvloop
except ImportError:  # the fast extra is optional
    uvloop = None

_BOTH_LOOPS_MODULES = {
    "test_telnet",
    "test_http",
    "test_devices",
    "test_ws_strict",
    "test_http_static",
    "test_tls",
    "test_telnet_auth",
    "test_http_auth",
    "test_tickets",
}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
    module = item.path.stem
    if uvloop is not None and module in _BOTH_LOOPS_MODULES:
        factories["uvloop"] = uvloop.new_event_loop
    return factories
