"""A reload's listeners either bind or the outcome says so.  A new port on an address the running daemon
keeps (the HTTP listener's, when moving ``http.listen`` needs a restart) rejects the reload at prepare,
naming the port's key; and when an address a removed port gave up is taken by someone else before the new
port binds it, the reload is applied but reported **partial**: logged, audited, counted, and
``last_reload_successful`` is 0.  Real daemons, real sockets."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import aiohttp
import pytest

from serialmuxd.config import load_config
from serialmuxd.daemon import Daemon

from .reload_support import daemon_process, metric
from .support import GuestPty
from .test_cli import free_port

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


def _head(tmp: Path, http_port: int) -> str:
    return f"""
[daemon]
state_dir = "{tmp / "state"}"
log_format = "json"
[audit]
file = "{tmp / "audit.jsonl"}"
[http]
listen = "127.0.0.1:{http_port}"
"""


def _port(name: str, device: str, telnet: str) -> str:
    return f"""
[[ports]]
name = "{name}"
device = "{device}"
telnet = "{telnet}"
"""


def _audit(tmp: Path) -> list[dict[str, object]]:
    lines = (tmp / "audit.jsonl").read_text().splitlines()
    return [record for line in lines if (record := json.loads(line))["event"] == "config_reload"]


async def test_a_new_port_on_the_kept_http_address_rejects_the_reload(tmp_path: Path) -> None:
    guest = GuestPty()
    http_port, moved = free_port(), free_port()
    config = tmp_path / "serialmuxd.toml"
    config.write_text(_head(tmp_path, http_port) + _port("p1", f"tty:{guest.path}", "127.0.0.1:0"))
    try:
        async with daemon_process(config, http_port) as daemon:
            # http.listen moves (that needs a restart: the old address stays in use) and p2 takes the old one.
            config.write_text(
                _head(tmp_path, moved)
                + _port("p1", f"tty:{guest.path}", "127.0.0.1:0")
                + _port("p2", f"tty:{guest.path}x", f"127.0.0.1:{http_port}")
            )
            await daemon.reload()
            failed = daemon.events("reload_failed")
            assert [e["key"] for e in failed] == ["ports[1].telnet"], failed
            assert not daemon.events("reloaded") and not daemon.events("reload_listen_failed")
            assert not [e for e in daemon.events("listening") if e.get("port") == "p2"]
            scrape = await daemon.scrape()  # the HTTP listener is where it was, and says what happened
            assert metric(scrape, "serialmuxd_config_reloads_total", result="failed") == 1
            assert metric(scrape, "serialmuxd_config_reloads_total", result="ok") == 0
            assert metric(scrape, "serialmuxd_config_last_reload_successful") == 0
            assert [r["result"] for r in _audit(tmp_path)] == ["failed"]
    finally:
        guest.close()


async def test_an_address_taken_before_the_new_listener_binds_makes_the_reload_partial(
    tmp_path: Path,
) -> None:
    old, new = GuestPty(), GuestPty()
    http_port, address = free_port(), free_port()
    config = tmp_path / "serialmuxd.toml"
    config.write_text(_head(tmp_path, http_port) + _port("old", f"tty:{old.path}", f"127.0.0.1:{address}"))
    daemon = Daemon(load_config(config))
    await daemon.start()
    intruder = socket.socket()
    try:
        real_close_port = daemon.close_port

        async def close_port_then_take_its_address(name: str, reason: str) -> None:
            await real_close_port(name, reason)
            if name == "old":  # someone else binds the address in the moment it is free
                intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                intruder.bind(("127.0.0.1", address))
                intruder.listen()

        daemon.close_port = close_port_then_take_its_address  # type: ignore[method-assign]
        config.write_text(
            _head(tmp_path, http_port) + _port("new", f"tty:{new.path}", f"127.0.0.1:{address}")
        )
        assert await daemon.reloader.reload("test")  # applied: old is gone, new runs

        assert list(daemon.hubs) == ["new"]
        assert not [b for b in daemon.listeners if b.port in ("old", "new")]  # but nobody can reach new
        stats = daemon.reloader.stats
        assert (stats.ok, stats.failed, stats.partial, stats.last_successful) == (0, 0, 1, False)
        (record,) = _audit(tmp_path)
        assert record["result"] == "partial" and record["added"] == ["new"] and record["removed"] == ["old"]
        listen_failed = record["listen_failed"]
        assert isinstance(listen_failed, list) and len(listen_failed) == 1, record
        missing = str(listen_failed[0])
        assert missing.startswith("ports[0].telnet: ") and str(address) in missing, missing
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{http_port}/metrics") as resp,
        ):
            scrape = await resp.text()
        assert metric(scrape, "serialmuxd_config_reloads_total", result="partial") == 1
        assert metric(scrape, "serialmuxd_config_last_reload_successful") == 0
    finally:
        intruder.close()
        await daemon.stop()
        old.close()
        new.close()
