"""Daemon lifecycle: config → hubs → listeners → READY → wait for a stop signal → drain → exit.

Start-up is all-or-nothing for listeners (a busy address is the operator's mistake and must be loud: we exit
non-zero naming it) and lenient for devices: a device that is missing at start marks only its port offline
and is retried with backoff, because USB adapters get plugged in later and VMs get started later.  Clients
may attach to an offline port and are told so in-band.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from .adapters import make_adapter
from .auth.setup import FrontDoor, build_access
from .config import Config, ListenAddress, PortConfig
from .config import is_loopback_host as _is_loopback
from .control import Console, ConsoleSwitch
from .core.access import AccessPolicy, AttachMode, Identity, Verb
from .devices import open_link
from .devices.base import DeviceLink
from .devices.program import hide_from_programs
from .errors import StartupError
from .frontends.telnet import start_listener
from .hub import PortHub, RefusalKind, Refused
from .hub.health import warm_matchers
from .obs.audit import AuditLog
from .obs.consolelog import ConsoleLogWriter, History, load_history, prepare_dir
from .obs.consolelog_policy import history_budget
from .obs.metrics import metrics_registry
from .obs.sdnotify import sd_notify, watchdog_interval_s
from .obs.webhook import WebhookSender, attach_alerts
from .reload.runner import Reloader
from .rlimits import (
    CLIENT_HEADROOM,
    DescriptorWatch,
    descriptor_budget,
    open_descriptors,
    raise_nofile_limit,
)
from .state import DaemonState, PortSwitch, StateStore

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .auth.oidc import JwtVerifier
    from .frontends.http import HttpFrontend
    from .frontends.ssh import SshFrontend

log = structlog.get_logger("serialmuxd")

# Offsets never go back, even after a crash: the state file always holds a floor at least this far ahead of
# every port's stream end, raised (and saved) before a port's end can reach it.
_OFFSET_RESERVE = 1 << 32
_OFFSET_CHECK_S = 10.0
_DESCRIPTOR_CHECK_S = 5.0
_VM_POLL_S = 10.0


@dataclass(frozen=True, slots=True)
class BoundListener:
    port: str
    kind: str  # "telnet" | "raw" | "telnet-readonly" | "raw-readonly"
    host: str
    tcp_port: int  # the real port (differs from the config when it asked for 0)


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
    """Owns every hub, listener and task; ``start``/``stop`` are the only entry points.

    Front ends see it only as ``control.ConsoleControl``: the consoles, the host-wide switch, and
    enable/disable, each decided by the same ``AccessPolicy`` the hubs use.
    """

    def __init__(
        self,
        config: Config,
        *,
        link_factory: Callable[[PortHub], DeviceLink] = _default_link_factory,
        access: AccessPolicy | None = None,
    ) -> None:
        self.config = config
        self._store = StateStore(config.daemon.state_dir)
        self.state = DaemonState()
        self._link_factory = link_factory
        # With [auth], deny by default: the policy's grants come from the users file and [auth.oidc]; a bad
        # users file is a ConfigError (exit 2) raised here, before anything is bound.
        # Every access and privileged action: JSON lines in [audit] file, and the daemon's log.  No I/O here
        # (Daemon() runs before start-up errors are handled): start() opens the file.
        self.audit = AuditLog(config.audit.file)
        built_access, self.front_door = build_access(config, self.audit)
        self.access = access if access is not None else built_access
        self.hubs: dict[str, PortHub] = {}
        self.console_logs = ConsoleLogWriter()  # [logs]: one writer thread for every port's log file
        # SIGHUP: read the file again and apply what changed (serialmuxd/reload/), one reload at a time.
        self.reloader = Reloader(self)
        # Read from the hubs and the authenticator at scrape time (obs/metrics.py); never the global registry.
        self.metrics_registry = metrics_registry(
            lambda: self.hubs.values(),
            self.front_door.authenticator if self.front_door else None,
            reloads=self.reloader.stats,
        )
        self.listeners: list[BoundListener] = []
        self._bindings: list[tuple[PortHub, asyncio.Server, list[BoundListener]]] = []  # per port's hub
        self.http_address: tuple[str, int] | None = None
        self._servers: list[asyncio.Server] = []
        self._http: HttpFrontend | None = None
        self._ssh: SshFrontend | None = None
        self.ssh_address: tuple[str, int] | None = None
        self._tls: ssl.SSLContext | None = None
        self._oidc: JwtVerifier | None = None
        self._oidc_refresh: asyncio.Task[bool] | None = None
        self._offset_task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._watchdog_task: asyncio.Task[None] | None = None
        self._fd_task: asyncio.Task[None] | None = None
        self._webhook: WebhookSender | None = None  # [alerts] webhook_url: guest-health deliveries
        self.stop_requested = asyncio.Event()

    def _build_hubs(self) -> None:
        # Secrets meant for adapters (an IPMI password in the environment) must not reach exec: consoles.
        hide_from_programs(
            name for port in self.config.ports if (name := getattr(port.hypervisor, "password_env", None))
        )
        for port in self.config.ports:
            offset = self.state.offsets.get(port.name, 0)
            previous_end = offset if self.state.clean_stop else None
            history = None
            if port.log is not None:
                prepare_dir(port.log.dir)
                want = history_budget(port.log.history_bytes, port.replay_bytes, port.scrollback_bytes)
                history = load_history(port.name, port.log, want)
                if history is not None and (port.name not in self.state.offsets or offset < history.end):
                    # The log knows a later end than the state file (none kept, or a different one): the
                    # previous run's true end is unknown, so leave a reserve like a crash does.
                    offset, previous_end = history.end + _OFFSET_RESERVE, None
            self.hubs[port.name] = self.new_hub(
                port, start_offset=offset, previous_end=previous_end, history=history
            )

    def new_hub(
        self,
        port: PortConfig,
        *,
        start_offset: int,
        previous_end: int | None,
        history: History | None = None,
    ) -> PortHub:
        """One port's hub, not started, disabled if its persisted switch (or the host's) says so; with
        ``[logs]`` its console log, and (at start-up) the history the previous run persisted."""
        console_log = None
        if port.log is not None:
            prepare_dir(port.log.dir)
            console_log = self.console_logs.port_log(port.name, port.log, start_offset)
        hub = PortHub(
            port,
            self._link_factory,
            access=self.access,
            adapter=None if port.hypervisor is None else make_adapter(port.hypervisor, port.name),
            audit=self.audit,
            start_offset=start_offset,
            previous_end=previous_end,
            console_log=console_log,
            history=history,
        )
        switch = self.state.ports.get(port.name)
        enabled = (switch.enabled if switch else port.enabled) and self.state.console_enabled
        if not enabled:
            hub.disable_at_start(self._disabled_reason(port.name))
        return hub

    def _disabled_reason(self, name: str) -> str:
        if not self.state.console_enabled:
            return self.state.console_reason or "the serial console is disabled for this host"
        switch = self.state.ports.get(name)
        if switch is not None and not switch.enabled:
            return switch.reason or "disabled through the API"
        return "disabled in the configuration"

    async def start(self) -> None:
        """Load state, bind every listener, then open devices.  On a listener error nothing stays open."""
        self.audit.open()  # StartupError naming the file if it cannot be written
        soft, hard = raise_nofile_limit()
        log.info("file_descriptor_limit", soft=soft, hard=hard)
        budget = descriptor_budget(self.config)
        refusal = budget.refusal(soft)
        if refusal is not None:  # every listener would bind and then the devices or the first clients fail
            raise StartupError(refusal)
        if budget.clients_left(soft) < CLIENT_HEADROOM:
            left = budget.clients_left(soft)
            log.warning("file_descriptors_tight", soft_limit=soft, fixed=budget.fixed, clients_left=left)
        self._tls = self._load_tls()  # a bad key or certificate is a StartupError naming the file
        self.reloader.tls_started(self._tls)  # a reload rotates the certificate new handshakes get
        await self._start_oidc()
        self._warn_if_exposed()
        for key, reason in self.config.warnings:
            log.warning("config_deprecated", file=self.config.source, key=key, reason=reason)
        self.state = self._store.load()
        # Hyperscan databases of the guest-health matchers, compiled off the loop (hub/health.py).
        await asyncio.to_thread(warm_matchers, self.config.ports, self.config.alerts.patterns)
        self._build_hubs()
        # From here until a clean stop the saved offsets are floors, not exact ends (a SIGKILL keeps them).
        self.state.clean_stop = False
        self._raise_offset_floors(force=True)
        try:
            for port in self.config.ports:
                hub = self.hubs[port.name]
                tls = self._tls if port.telnet_tls else None
                await self._listen(hub, port.telnet, raw=port.raw, mode=AttachMode.INTERACTIVE, tls=tls)
                await self._listen(
                    hub, port.telnet_readonly, raw=port.raw, mode=AttachMode.READ_ONLY, tls=tls
                )
            await self._start_ssh()
            await self._start_http()
        except StartupError:
            await self._close_servers()
            if self._ssh is not None:  # started before HTTP: stopped when HTTP cannot start
                await self._ssh.stop()
                self._ssh = None
            await self._close_oidc()  # its key fetch and HTTP client (an unusable client secret file)
            raise
        # After the listeners (a start-up error leaves no sender task behind), before any guest byte.
        self._webhook = attach_alerts(self.config.alerts, self.hubs.values())
        self.console_logs.start()
        for hub in self.hubs.values():
            hub.start()
        for hub in self.hubs.values():
            if hub.vm.adapter is not None:
                await hub.vm.adapter.open()
        loop = asyncio.get_running_loop()
        self._offset_task = loop.create_task(self._watch_offsets())
        self._fd_task = loop.create_task(self._watch_descriptors(soft))
        if any(h.vm.adapter is not None and h.vm.adapter.kind != "qmp" for h in self.hubs.values()):
            self._poll_task = loop.create_task(self._poll_vm_states())
        interval = watchdog_interval_s()
        if interval is not None:
            self._watchdog_task = loop.create_task(self._feed_watchdog(interval))
        sd_notify(f"READY=1\nSTATUS=serving {len(self.hubs)} console ports")
        self.reloader.ready()  # from now on SIGHUP reloads (one that came during start-up runs now)
        log.info(
            "ready",
            ports=len(self.hubs),
            http=None if self.http_address is None else "{}:{}".format(*self.http_address),
        )

    @property
    def http_frontend(self) -> HttpFrontend | None:
        """The HTTP front end once it listens (a reload ends the page sessions it withdrew)."""
        return self._http

    async def _start_http(self) -> None:
        if self.config.http.listen is None:
            return
        from .frontends.http import HttpFrontend  # aiohttp is loaded only when HTTP is configured

        frontend = HttpFrontend(
            self,
            self.config.http,
            shutdown_timeout_s=self.config.daemon.shutdown_timeout_s,
            tls=self._tls if self.config.http.tls else None,
            audit=self.audit,
            auth=self.config.auth,
        )
        self.http_address = await frontend.start()
        self._http = frontend

    async def _start_ssh(self) -> None:
        settings = self.config.ssh
        if settings.listen is None or self.front_door is None:
            return  # configcheck refuses [ssh] listen without [auth]
        from .frontends.ssh import SshFrontend  # asyncssh is loaded only when SSH is configured
        from .frontends.ssh_hostkey import fingerprint_lines, load_host_keys

        keys = load_host_keys(settings.host_keys, self.config.daemon.state_dir)  # StartupError naming it
        frontend = SshFrontend(self, self.front_door, self.audit, keys)
        self.ssh_address = await frontend.start(settings.listen)
        self._ssh = frontend
        log.info(
            "listening",
            kind="ssh",
            address="{}:{}".format(*self.ssh_address),
            host_keys=fingerprint_lines(keys),
        )

    # -- ConsoleControl: what front ends may do ----------------------------------------------------------
    def consoles(self, identity: Identity) -> Sequence[Console]:
        """The consoles ``identity`` may view (a listing never shows the others)."""
        return [hub for name, hub in self.hubs.items() if self.access.decide(identity, Verb.VIEW, name)]

    def console(self, name: str, identity: Identity) -> Console | None:
        """None when there is no such console or ``identity`` may not view it: the two are not told apart,
        so names cannot be probed."""
        hub = self.hubs.get(name)
        if hub is None or not self.access.decide(identity, Verb.VIEW, name):
            return None
        return hub

    @property
    def authentication(self) -> FrontDoor | None:
        return self.front_door

    def console_switch(self) -> ConsoleSwitch:
        return ConsoleSwitch(self.state.console_enabled, self.state.console_reason)

    def metrics(self, identity: Identity) -> CollectorRegistry:
        """What ``GET /metrics`` serves: to an identity the policy lets view the host scope ``*``."""
        decision = self.access.decide(identity, Verb.VIEW, "*")
        if not decision:
            self.audit(
                "access_denied",
                port="*",
                verb=str(Verb.VIEW),
                **identity.audit_fields(),
                result="denied",
                reason=decision.reason,
            )
            raise Refused(RefusalKind.FORBIDDEN, decision.reason)
        return self.metrics_registry

    def _require_admin(self, identity: Identity, scope: str) -> None:
        decision = self.access.decide(identity, Verb.ADMIN, scope)
        if not decision:
            self.audit(
                "access_denied",
                port=scope,
                verb=str(Verb.ADMIN),
                **identity.audit_fields(),
                result="denied",
                reason=decision.reason,
            )
            raise Refused(RefusalKind.FORBIDDEN, decision.reason)

    async def set_port_enabled(self, identity: Identity, name: str, enabled: bool, reason: str) -> None:
        self._require_admin(identity, name)
        self.audit("port_switch", port=name, enabled=enabled, reason=reason, **identity.audit_fields())
        self.state.ports[name] = PortSwitch(enabled, reason)
        self._save_state()
        await self._apply_switch(name)

    async def set_console_enabled(self, identity: Identity, enabled: bool, reason: str) -> None:
        self._require_admin(identity, "*")
        self.audit("console_switch", enabled=enabled, reason=reason, **identity.audit_fields())
        self.state.console_enabled = enabled
        self.state.console_reason = reason
        self._save_state()
        for name in list(self.hubs):  # a copy: a reload may add or remove ports meanwhile
            await self._apply_switch(name)

    async def _apply_switch(self, name: str) -> None:
        hub = self.hubs.get(name)
        if hub is None:  # removed by a reload meanwhile; its persisted switch stays for when it comes back
            return
        switch = self.state.ports.get(name)
        port_enabled = switch.enabled if switch else hub.config.enabled
        enabled = port_enabled and self.state.console_enabled
        await hub.set_enabled(enabled, "" if enabled else self._disabled_reason(name))

    # -- offsets that survive restarts --------------------------------------------------------------------
    def _raise_offset_floors(self, *, force: bool = False) -> None:
        changed = force
        for name, hub in self.hubs.items():
            floor = self.state.offsets.get(name, 0)
            if hub.ring.end + _OFFSET_RESERVE // 2 > floor:
                self.state.offsets[name] = hub.ring.end + _OFFSET_RESERVE
                changed = True
        if changed:
            self._save_state()

    async def _watch_offsets(self) -> None:
        while True:
            await asyncio.sleep(_OFFSET_CHECK_S)
            self._raise_offset_floors()

    async def _watch_descriptors(self, soft_limit: int) -> None:
        """Log when open descriptors near the limit (new clients would get an immediate EOF) and when
        they are back to normal; sessions that exist keep being served either way."""
        watch = DescriptorWatch()
        while True:
            await asyncio.sleep(_DESCRIPTOR_CHECK_S)
            in_use = open_descriptors(soft_limit)
            if in_use is None:
                return  # no /proc: nothing to watch
            event = watch.check(in_use, soft_limit)
            if event == "low":
                log.error(
                    "file_descriptors_low",
                    open=in_use,
                    soft_limit=soft_limit,
                    hint="new connections may be refused; raise LimitNOFILE or lower max_sessions",
                )
            elif event == "recovered":
                log.info("file_descriptors_recovered", open=in_use, soft_limit=soft_limit)

    async def _feed_watchdog(self, interval_s: float) -> None:
        """Pinged from the event loop itself: if the loop stalls, systemd notices and restarts us."""
        while True:
            sd_notify("WATCHDOG=1")
            await asyncio.sleep(interval_s)

    async def _poll_vm_states(self) -> None:
        """QMP pushes state changes as events; the other adapters only answer when asked."""
        while True:
            for hub in list(self.hubs.values()):  # a copy: a reload may add or remove ports meanwhile
                adapter = hub.vm.adapter
                if adapter is not None and adapter.kind != "qmp":
                    await adapter.state()  # notifies the hub's VmControl when it changed
            await asyncio.sleep(_VM_POLL_S)

    def _save_state(self) -> None:
        try:
            self._store.save(self.state)
        except OSError as exc:
            log.error("state_save_failed", path=str(self._store.path), error=exc.strerror or str(exc))

    async def _start_oidc(self) -> None:
        oidc = self.config.auth.oidc if self.config.auth is not None else None
        if oidc is None or self.front_door is None:
            return
        import aiohttp

        from .auth.oidc import JwtVerifier, OidcSettings

        settings = OidcSettings(
            issuer=oidc.issuer,
            audience=oidc.audience,
            user_claim=oidc.user_claim,
            groups_claim=oidc.groups_claim,
        )
        self._oidc = JwtVerifier(settings, aiohttp.ClientSession)
        self.front_door.authenticator.use_oidc(self._oidc)
        # Fetch the provider's keys now, in the background: the first sign-in then does not wait, and a
        # provider that is down at start-up does not keep the consoles from starting.
        self._oidc_refresh = asyncio.get_running_loop().create_task(self._oidc.refresh())

    async def _close_oidc(self) -> None:
        refresh, self._oidc_refresh = self._oidc_refresh, None
        if refresh is not None:
            refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await refresh
        oidc, self._oidc = self._oidc, None
        if oidc is not None:
            await oidc.close()

    def _load_tls(self) -> ssl.SSLContext | None:
        tls = self.config.tls
        needed = self.config.http.tls or any(port.telnet_tls for port in self.config.ports)
        if tls is None or not needed:
            return None
        from .tls import load_server_context

        return load_server_context(tls.cert_file, tls.key_file, tls.client_ca_file)

    def _warn_if_exposed(self) -> None:
        """The override lets a listener off loopback without [auth] or TLS: say so, loudly, every start."""
        if not self.config.daemon.allow_remote_unauthenticated:
            return
        exposed = [
            str(address)
            for port in self.config.ports
            for address in (port.telnet, port.telnet_readonly)
            if address is not None
            and not _is_loopback(address.host)
            and not (self.front_door and port.telnet_tls)
        ]
        http = self.config.http
        if (
            http.listen is not None
            and not _is_loopback(http.listen.host)
            and not (self.front_door and http.tls)
        ):
            exposed.append(str(http.listen))
        ssh = self.config.ssh.listen
        if ssh is not None and not _is_loopback(ssh.host) and not self.front_door:
            exposed.append(str(ssh))  # SSH encrypts by itself: only missing [auth] exposes it
        if exposed:
            hint = (
                "daemon.allow_remote_unauthenticated is set: these listeners lack [auth] or TLS; "
                "anyone who can reach them can read the consoles, or sniff credentials"
            )
            log.warning(
                "listeners_exposed", addresses=exposed, authentication=self.front_door is not None, hint=hint
            )
            self.audit("config_problem", reason=hint, addresses=exposed, result="accepted by override")

    async def _listen(
        self,
        hub: PortHub,
        address: ListenAddress | None,
        *,
        raw: bool,
        mode: AttachMode,
        tls: ssl.SSLContext | None = None,
    ) -> asyncio.Server | None:
        if address is None:
            return None
        server = await start_listener(hub, address, raw=raw, mode=mode, door=self.front_door, tls=tls)
        self._servers.append(server)
        kind = ("raw" if raw else "telnet") + ("-readonly" if mode is AttachMode.READ_ONLY else "")
        bound = []
        for sock in server.sockets:
            host, tcp_port = sock.getsockname()[:2]
            bound.append(BoundListener(hub.name, kind, host, tcp_port))
            log.info("listening", port=hub.name, kind=kind, address=f"{host}:{tcp_port}")
        self.listeners.extend(bound)
        self._bindings.append((hub, server, bound))
        return server

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
        self._bindings.clear()

    async def stop(self) -> None:
        await self.reloader.close()  # a reload that runs finishes first; later SIGHUPs are ignored
        sd_notify("STOPPING=1")
        for task in (self._offset_task, self._poll_task, self._watchdog_task, self._fd_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._close_servers()
        if self._ssh is not None:
            await self._ssh.stop_listening()  # its connections are closed after the hubs told them why
        if self._http is not None:
            await self._http.stop()  # closes WebSockets first
            self._http = None
        timeout = self.config.daemon.shutdown_timeout_s
        closing = [hub.close() for hub in self.hubs.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*closing), timeout)
        except TimeoutError:
            log.warning("shutdown_timeout", seconds=timeout)
        if self._ssh is not None:
            await self._ssh.stop()
            self._ssh = None
        await self.console_logs.stop()  # the hubs flushed and closed their logs; a stuck one is cut here
        for hub in self.hubs.values():
            if hub.vm.adapter is not None:
                try:
                    await hub.vm.adapter.close()
                except Exception as exc:  # one stuck adapter must not keep the state from being saved
                    log.error("adapter_close_failed", port=hub.name, error=str(exc))
        # A clean stop knows the exact ends: the next run continues right after them.
        for name, hub in self.hubs.items():
            self.state.offsets[name] = hub.ring.end
        self.state.clean_stop = True
        self._save_state()
        await self._close_oidc()
        if self._webhook is not None:
            await self._webhook.stop()
        self.audit.close()  # last: the hubs' detach events of the shutdown are in it

    # -- hot reload: what serialmuxd/reload/runner.py asks of the daemon ---------------------------------
    async def listen_one(
        self, hub: PortHub, address: ListenAddress, kind: str, tls: ssl.SSLContext | None
    ) -> asyncio.Server:
        """Bind one listener of ``kind`` (a ``BoundListener.kind``) for ``hub``; ``StartupError`` if busy."""
        mode = AttachMode.READ_ONLY if kind.endswith("-readonly") else AttachMode.INTERACTIVE
        server = await self._listen(hub, address, raw=kind.startswith("raw"), mode=mode, tls=tls)
        assert server is not None
        return server

    def listeners_of(self, hub: PortHub) -> list[asyncio.Server]:
        return [server for owner, server, _ in self._bindings if owner is hub]

    def close_listeners(self, hub: PortHub, only: Sequence[asyncio.Server] = ()) -> None:
        """Stop accepting for ``hub`` (or just the servers in ``only``); open sessions stay."""
        for binding in [b for b in self._bindings if b[0] is hub and (not only or b[1] in only)]:
            _, server, bound = binding
            server.close()
            self._bindings.remove(binding)
            self._servers.remove(server)
            self.listeners = [b for b in self.listeners if b not in bound]

    async def close_port(self, name: str, reason: str) -> None:
        """Take a port out: listeners first, then its sessions (told ``reason``), device link, adapter."""
        hub = self.hubs.pop(name)
        self.close_listeners(hub)
        timeout = self.config.daemon.shutdown_timeout_s
        try:
            await asyncio.wait_for(hub.close(reason), timeout)
        except TimeoutError:
            log.warning("port_close_timeout", port=name, seconds=timeout)
        if hub.vm.adapter is not None:
            try:
                await hub.vm.adapter.close()
            except Exception as exc:
                log.error("adapter_close_failed", port=name, error=str(exc))

    async def start_hub(self, hub: PortHub) -> None:
        """A port added (or rebuilt) by a reload starts the way start-up starts one."""
        password_env = getattr(hub.config.hypervisor, "password_env", None)
        if password_env:
            hide_from_programs([password_env])
        hub.start()
        if hub.vm.adapter is not None:
            await hub.vm.adapter.open()
            if hub.vm.adapter.kind != "qmp" and self._poll_task is None:
                self._poll_task = asyncio.get_running_loop().create_task(self._poll_vm_states())

    def use_tls(self, context: ssl.SSLContext) -> None:
        self._tls = context

    async def reconfigure_alerts(self, new_hubs: Sequence[PortHub], *, changed: bool) -> None:
        """[alerts] for the hubs a reload added, or (when [alerts] changed) a new sender for all."""
        if changed:
            if self._webhook is not None:
                await self._webhook.stop()
            self._webhook = attach_alerts(self.config.alerts, self.hubs.values())
            return
        submit = None if self._webhook is None else self._webhook.submit
        for hub in new_hubs:
            hub.health.configure(self.config.alerts.patterns, submit)

    async def apply_switch(self, name: str) -> None:
        await self._apply_switch(name)

    def after_reload(self) -> None:
        self._raise_offset_floors(force=True)  # new ports' floors are saved before their first byte
        self._warn_if_exposed()

    def _hangup(self) -> None:
        self.reloader.request("SIGHUP")

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop the daemon gracefully; SIGHUP reloads the configuration file
        (serialmuxd/reload/).  Installed before ``start`` so that no signal that arrives once READY=1 is out
        can kill the process the default way."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, self._hangup)

    async def run_until_stopped(self) -> None:
        """Serve until SIGTERM/SIGINT (or ``stop_requested`` is set), then shut down gracefully."""
        loop = asyncio.get_running_loop()
        try:
            await self.stop_requested.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):  # a second one during the stop ends it at once
                loop.remove_signal_handler(signum)
            try:
                await self.stop()  # a SIGHUP meanwhile (systemctl reload) is logged and ignored
            finally:
                loop.remove_signal_handler(signal.SIGHUP)
                # Not back to the default action (terminate): a late reload must not kill a clean exit.
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
