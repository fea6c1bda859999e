"""Daemon lifecycle: config → hubs → listeners → READY → wait for a stop signal → drain → exit.

Start-up is all-or-nothing for listeners (a busy address is the operator's mistake and must be loud: we exit
non-zero naming it) and lenient for devices: a device that is missing at start marks only its port offline
and is retried with backoff, because USB adapters get plugged in later and VMs get started later.  Clients
may attach to an offline port and are told so in-band.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from .config import Config, ListenAddress
from .devices import open_link
from .devices.base import DeviceLink
from .errors import StartupError
from .frontends.telnet import start_listener
from .hub import AttachMode, PortHub
from .obs.sdnotify import sd_notify

log = structlog.get_logger("serialmuxd")


@dataclass(frozen=True, slots=True)
class BoundListener:
    port: str
    kind: str  # "telnet" | "raw" | "telnet-readonly" | "raw-readonly"
    host: str
    tcp_port: int  # the real port (differs from the config when it asked for 0)


def _audit_to_log(event: str, /, **fields: Any) -> None:
    structlog.get_logger("serialmuxd.audit").info(event, **fields)


def _default_link_factory(hub: PortHub) -> DeviceLink:
    cfg = hub.config
    return open_link(
        cfg.name,
        cfg.device,
        hub,
        serial=cfg.serial,
        write_buffer_limit=cfg.device_buffer_bytes,
        reconnect_initial_s=cfg.reconnect_initial_s,
        reconnect_max_s=cfg.reconnect_max_s,
    )


class Daemon:
    """Owns every hub, listener and task; ``start``/``stop`` are the only entry points."""

    def __init__(
        self,
        config: Config,
        *,
        link_factory: Callable[[PortHub], DeviceLink] = _default_link_factory,
    ) -> None:
        self.config = config
        self.hubs: dict[str, PortHub] = {
            p.name: PortHub(p, link_factory, audit=_audit_to_log) for p in config.ports
        }
        self.listeners: list[BoundListener] = []
        self._servers: list[asyncio.Server] = []
        self.stop_requested = asyncio.Event()

    async def start(self) -> None:
        """Bind every listener, then open devices.  On a listener error nothing stays open."""
        try:
            for port in self.config.ports:
                hub = self.hubs[port.name]
                await self._listen(hub, port.telnet, raw=port.raw, mode=AttachMode.INTERACTIVE)
                await self._listen(hub, port.telnet_readonly, raw=port.raw, mode=AttachMode.VIEWER)
        except StartupError:
            await self._close_servers()
            raise
        for hub in self.hubs.values():
            hub.start()
        sd_notify(f"READY=1\nSTATUS=serving {len(self.hubs)} console ports")

    async def _listen(
        self, hub: PortHub, address: ListenAddress | None, *, raw: bool, mode: AttachMode
    ) -> None:
        if address is None:
            return
        server = await start_listener(hub, address, raw=raw, mode=mode)
        self._servers.append(server)
        kind = ("raw" if raw else "telnet") + ("-readonly" if mode is AttachMode.VIEWER else "")
        for sock in server.sockets:
            host, tcp_port = sock.getsockname()[:2]
            self.listeners.append(BoundListener(hub.name, kind, host, tcp_port))

    def listener(self, port: str, kind: str = "telnet") -> BoundListener:
        """The bound address of one listener (tests, the demo banner)."""
        for bound in self.listeners:
            if bound.port == port and bound.kind == kind:
                return bound
        raise KeyError(f"{port}/{kind}")

    async def _close_servers(self) -> None:
        for server in self._servers:
            server.close()
        # Server.wait_closed() waits for every connection on 3.12+; connections are closed by the hubs.
        self._servers.clear()

    async def stop(self) -> None:
        sd_notify("STOPPING=1")
        await self._close_servers()
        timeout = self.config.daemon.shutdown_timeout_s
        closing = [hub.close() for hub in self.hubs.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*closing), timeout)
        except TimeoutError:
            log.warning("shutdown_timeout", seconds=timeout)

    async def run_until_stopped(self) -> None:
        """Serve until SIGTERM/SIGINT (or ``stop_requested`` is set), then shut down gracefully."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop_requested.set)
        try:
            await self.stop_requested.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            await self.stop()
