"""Hubs a reload removes or rebuilds are freed although the daemon froze its start-up heap after READY
(``cli._settle_heap``, as ``serialmuxd run`` does): a hub lives in reference cycles, and the cyclic GC never
scans frozen objects, so without ``reload/heap.py`` each one kept its ring, history and timeline for the
life of the process.  An in-process daemon with real PTY guests, a raw session and a WebSocket on the port
that goes; afterwards the heap is frozen again."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import aiohttp
import pytest

from serialmuxd.cli import _settle_heap
from serialmuxd.config import load_config
from serialmuxd.daemon import Daemon
from serialmuxd.hub import PortHub

from .support import GuestPty, TcpClient, eventually
from .test_cli import free_port
from .test_http import WsClient

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


def _config(tmp: Path, http_port: int, ports: dict[str, str]) -> str:
    text = f"""
[daemon]
state_dir = "{tmp / "state"}"
[http]
listen = "127.0.0.1:{http_port}"
"""
    for name, device in ports.items():
        text += f"""
[[ports]]
name = "{name}"
device = "{device}"
telnet = "127.0.0.1:0"
raw = true
scrollback_bytes = 8388608
"""
    return text


def _freed(ref: weakref.ref[PortHub]) -> bool:
    gc.collect()
    return ref() is None


async def test_hubs_a_reload_takes_out_are_freed_after_the_start_up_freeze(tmp_path: Path) -> None:
    keep, gone, old, new = (GuestPty() for _ in range(4))
    http_port = free_port()
    config = tmp_path / "serialmuxd.toml"
    config.write_text(
        _config(
            tmp_path,
            http_port,
            {"keep": f"tty:{keep.path}", "gone": f"tty:{gone.path}", "re": f"tty:{old.path}"},
        )
    )
    daemon = Daemon(load_config(config))
    await daemon.start()
    try:
        _settle_heap()  # what `serialmuxd run` does once READY is out
        assert gc.get_freeze_count() > 0
        removed, rebuilt = weakref.ref(daemon.hubs["gone"]), weakref.ref(daemon.hubs["re"])
        kept = daemon.hubs["keep"]
        bound = daemon.listener("gone", "raw")
        raw = await TcpClient.connect(bound.host, bound.tcp_port)
        await raw.expect(b"you have write access")
        await gone.send(b"x" * 100_000)  # a ring with something in it
        async with aiohttp.ClientSession() as http:
            ws = WsClient(await http.ws_connect(f"http://127.0.0.1:{http_port}/api/v1/ports/gone/ws?mode=ro"))
            await ws.wait_kind("hello")

            config.write_text(
                _config(tmp_path, http_port, {"keep": f"tty:{keep.path}", "re": f"tty:{new.path}"})
            )
            assert await daemon.reloader.reload("test")
            await raw.wait_eof()
            assert await ws.wait_closed() == 1001
        await raw.close()

        await eventually(lambda: _freed(removed), "the removed port's hub freed")
        await eventually(lambda: _freed(rebuilt), "the rebuilt port's old hub freed")
        assert daemon.hubs["keep"] is kept
        # Frozen again once they were gone: the start-up heap stays out of later collections.
        await eventually(lambda: gc.get_freeze_count() > 0, "the heap frozen again")
    finally:
        gc.unfreeze()
        await daemon.stop()
        for guest in (keep, gone, old, new):
            guest.close()
