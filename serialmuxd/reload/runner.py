"""Hot reload (SIGHUP, ``systemctl reload``): read the configuration file again and apply what changed.

Theory of operation
-------------------
One reload at a time.  ``request`` (the SIGHUP handler) starts a reload task, or, while one runs, marks one
more to follow it: any number of signals during a reload give exactly one more reload, which reads the file
as it is by then.  Once the daemon is stopping, requests are ignored (and logged).

A reload has two phases.  **Prepare** does everything that can fail without touching what runs: the file
goes through the one validator (``config.load_config``), the users file through its loader, the TLS files
through ``tls.load_server_context``; new hubs are built and the listeners of ports that are added (or moved)
are bound, except on an address that apply itself sets free (a removed, rebuilt or rebound port's).  Any
failure there rejects the reload: what was bound is closed, the old configuration keeps serving, each
problem is logged as ``reload_failed`` with the same ``FILE: key.path: reason`` text ``check-config``
prints, counted, and audited.  **Apply** then cannot be
refused: removed ports' sessions are told why and closed (each ``detach`` audited), then their listeners,
device links and adapters; changed ports are rebuilt, get new listeners (``plan.LISTENER_FIELDS``: the
sessions and the device stay) or are reconfigured in place (``plan.LIVE_PORT_FIELDS``);
the access policy, the authenticator's users and tokens, the TLS certificate and ``[alerts]`` are swapped;
sessions opened with a credential the new users file withdrew end (``revoke``: a removed user or token,
a changed password; page sessions and their WebSockets too), then sessions whose user may no longer view
their console are closed.  Ports that did not change are not
touched at all: same hub, same sessions, same device link, same listeners.

systemd hears ``RELOADING=1`` (with ``MONOTONIC_USEC``, as ``Type=notify-reload`` in newer systemd wants)
when a reload starts and ``READY=1`` when it is over, whatever the outcome.  Outcomes are counted for
``/metrics`` (``ReloadStats``) and audited as ``config_reload``: ``ok``, ``failed`` (nothing applied) or
``partial`` (applied, but a listener on an address apply had just set free could not be bound: someone else
took it).  A rebuilt port's new hub continues the stream at the old one's end, read once the old device is
closed (``PortHub.continue_at``); the hubs a reload took out are freed although start-up froze the heap
(``heap.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from ..config import Config, ListenAddress, PortConfig, load_config
from ..core.access import Identity
from ..errors import ConfigError, StartupError
from ..hub import PortHub
from ..hub.health import warm_matchers
from ..obs.sdnotify import sd_notify
from .heap import HeapSettler
from .plan import ReloadPlan, plan_reload, port_names
from .revoke import Withdrawn, describe, withdrawn
from .tlsrotate import RotatingTls

if TYPE_CHECKING:
    from ..auth.users import UserDirectory
    from ..core.grants import RoleGrants
    from ..daemon import Daemon

log = structlog.get_logger("serialmuxd")


@dataclass(slots=True)
class ReloadStats:
    """Read by the metrics collector.  ``last_success_time`` starts at start-up (the first load), as
    Prometheus's own ``prometheus_config_last_reload_success_timestamp_seconds`` does."""

    last_success_time: float = field(default_factory=time.time)
    ok: int = 0
    failed: int = 0
    # Applied, but some listener could not be bound (its address was taken meanwhile): not "successful",
    # since what runs is not what the file says.
    partial: int = 0
    last_successful: bool = True


class ReloadRejected(Exception):
    """The new configuration cannot be applied; ``problems`` are ``(key, reason)`` pairs of ``source``."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        super().__init__(source)
        self.source = source
        self.problems = problems


@dataclass(slots=True)
class _Prepared:
    plan: ReloadPlan
    new_hubs: dict[str, PortHub]  # added and rebuilt ports, not started yet (their new listeners bound)
    old_servers: dict[str, list[asyncio.Server]]  # rebound ports: the listeners to close in apply
    late: dict[str, list[tuple[ListenAddress, str]]]  # addresses a running listener holds until apply
    grants: tuple[RoleGrants, UserDirectory] | None
    tls: ssl.SSLContext | None


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Reloader:
    """Owned by the daemon; see the module docstring."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self.stats = ReloadStats()
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._stopping = False
        self._ready = False  # the daemon has started: until then a request only waits
        self.ignored = 0  # requests that came while the daemon was stopping
        self._tls: RotatingTls | None = None
        self._heap = HeapSettler()  # frees the hubs a reload takes out (start-up froze the heap)

    # -- TLS --------------------------------------------------------------------------------------
    def tls_started(self, context: ssl.SSLContext | None) -> None:
        """The context the listeners start with; later reloads rotate what it hands out."""
        self._tls = None if context is None else RotatingTls(context)

    # -- requests ---------------------------------------------------------------------------------
    def ready(self) -> None:
        """The daemon is serving: reloads may run (one asked for during start-up runs now)."""
        self._ready = True
        if self._again:
            self._again = False
            self.request("SIGHUP (during start-up)")

    def request(self, trigger: str) -> None:
        if self._stopping or self._daemon.stop_requested.is_set():
            log.info("reload_ignored", trigger=trigger, reason="serialmuxd is shutting down")
            self.ignored += 1
            return
        if not self._ready or (self._task is not None and not self._task.done()):
            self._again = True  # one more after this one, however many signals come
            log.info("reload_queued", trigger=trigger)
            return
        self._task = asyncio.get_running_loop().create_task(self._run(trigger))

    async def close(self) -> None:
        """The daemon is stopping: no new reload, and the one running finishes first."""
        self._stopping = True
        self._again = False
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._heap.close()

    @property
    def idle(self) -> bool:
        return self._task is None or self._task.done()

    async def wait_idle(self) -> None:
        """Until no reload runs or is queued (tests; the signal handler never waits)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _run(self, trigger: str) -> None:
        while True:
            try:
                await self.reload(trigger)
            except Exception:  # a bug here must not end the daemon; the old configuration keeps serving
                log.exception("reload_crashed", trigger=trigger)
                self._count("failed")
                sd_notify(
                    f"READY=1\nSTATUS=serving {len(self._daemon.hubs)} console ports; last reload failed"
                )
            if not self._again or self._stopping:
                return
            self._again = False
            trigger = f"{trigger} (queued)"

    # -- one reload -------------------------------------------------------------------------------
    async def reload(self, trigger: str) -> bool:
        """Reload now; True if the new configuration was applied."""
        daemon = self._daemon
        source = daemon.config.source
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={_monotonic_usec()}\nSTATUS=reloading {source}")
        log.info("reload_started", trigger=trigger, file=source)
        try:
            if not Path(source).is_file():  # noqa: ASYNC240 (a stat of one local file)
                raise ReloadRejected(source, [("(file)", "no configuration file to read again (a demo)")])
            try:
                # Off the event loop: validating 1,000 ports takes a few hundred ms of CPU, and the consoles
                # must keep streaming meanwhile (the thread yields the GIL every few ms).
                new = await asyncio.to_thread(load_config, source)
            except ConfigError as exc:
                raise ReloadRejected(exc.source, exc.problems) from None
            prepared = await self._prepare(new)
        except ReloadRejected as exc:
            for key, reason in exc.problems:
                log.error(
                    "reload_failed",
                    problem=f"{exc.source}: {key}: {reason}",
                    file=exc.source,
                    key=key,
                    reason=reason,
                    hint="the running configuration is kept",
                )
            self._count("failed")
            daemon.audit(
                "config_reload",
                trigger=trigger,
                file=source,
                result="failed",
                problems=[f"{exc.source}: {key}: {reason}" for key, reason in exc.problems],
            )
            sd_notify(
                f"READY=1\nSTATUS=serving {len(daemon.hubs)} console ports; "
                f"reload failed: {exc.problems[0][0]}: {exc.problems[0][1]}"[:200]
            )
            return False
        plan = prepared.plan
        gone: list[weakref.ref[object]] = [
            weakref.ref(daemon.hubs[name]) for name in (*plan.removed, *port_names(plan.rebuilt))
        ]
        unbound = await self._apply(prepared)
        self._heap.dropped(gone)
        for key, reason in new.warnings:
            log.warning("config_deprecated", file=source, key=key, reason=reason)
        for key, reason in plan.needs_restart:
            log.warning("reload_needs_restart", file=source, key=key, reason=reason)
        result = "partial" if unbound else "ok"
        self._count(result)
        summary = {
            "added": list(plan.added),
            "removed": list(plan.removed),
            "rebuilt": port_names(plan.rebuilt),
            "rebound": port_names(plan.rebound),
            "updated": port_names(plan.updated),
        }
        # A partial reload also names what is missing (each was logged as reload_listen_failed).
        missing = {"listen_failed": [f"{key}: {reason}" for key, reason in unbound]} if unbound else {}
        (log.error if unbound else log.info)(
            "reloaded",
            trigger=trigger,
            file=source,
            result=result,
            **summary,
            unchanged=len(plan.unchanged),
            needs_restart=[key for key, _ in plan.needs_restart],
            **missing,
        )
        daemon.audit(
            "config_reload",
            trigger=trigger,
            file=source,
            result=result,
            **summary,
            needs_restart=[key for key, _ in plan.needs_restart],
            **missing,
        )
        status = f"serving {len(daemon.hubs)} console ports"
        if unbound:
            status += f"; reload partial: {unbound[0][0]}: {unbound[0][1]}"
        sd_notify(f"READY=1\nSTATUS={status}"[:200])
        return True

    def _count(self, result: str) -> None:
        """``result``: "ok", "failed" (nothing applied) or "partial" (applied, some listener missing)."""
        stats = self.stats
        stats.last_successful = result == "ok"
        if result == "ok":
            stats.ok += 1
            stats.last_success_time = time.time()
        elif result == "partial":
            stats.partial += 1
        else:
            stats.failed += 1

    # -- prepare: everything that may fail, nothing that changes what runs ------------------------------
    async def _prepare(self, new: Config) -> _Prepared:
        daemon = self._daemon
        plan = await asyncio.to_thread(plan_reload, daemon.config, new)  # frozen values: thread-safe
        if plan.refused:
            raise ReloadRejected(new.source, list(plan.refused))
        effective = plan.effective
        grants = None
        if effective.auth is not None:
            from ..auth.setup import build_grants

            try:
                grants = await asyncio.to_thread(build_grants, effective)
            except ConfigError as exc:
                raise ReloadRejected(exc.source, exc.problems) from None
        tls = await asyncio.to_thread(self._load_tls, effective)
        # New or changed health patterns: their Hyperscan databases compile here, not on the loop.
        await asyncio.to_thread(warm_matchers, effective.ports, effective.alerts.patterns)
        ports = {p.name: p for p in effective.ports}
        rebuilt = port_names(plan.rebuilt)
        # Addresses apply sets free (the listeners of removed, rebuilt and rebound ports): a new listener on
        # one of those is bound there, once the old one let go.  Any other address a running listener holds
        # (the HTTP or SSH listener's, kept until a restart moves it) is bound now: a clash rejects the
        # reload, naming the port's key.
        held = _released(daemon.config, {*plan.removed, *rebuilt, *port_names(plan.rebound)})
        context = self._tls.front if self._tls is not None else tls  # the front: rotations reach it
        new_hubs: dict[str, PortHub] = {}
        rebound = port_names(plan.rebound)
        old_servers = {name: daemon.listeners_of(daemon.hubs[name]) for name in rebound}
        new_servers: dict[str, list[asyncio.Server]] = {}
        late: dict[str, list[tuple[ListenAddress, str]]] = {}
        at = ""  # the key being set up, for the message
        try:
            for name in (*plan.added, *rebuilt, *rebound):
                at = f"ports[{_index(new, name)}]"
                if name in rebound:
                    hub = daemon.hubs[name]  # the same hub: new listeners, same sessions and device
                else:
                    hub = new_hubs[name] = self._new_hub(ports[name], rebuilt=name in rebuilt)
                for address, kind in _listeners(ports[name]):
                    at = f"ports[{_index(new, name)}]." + ("telnet_readonly" if "-" in kind else "telnet")
                    if address.port != 0 and _key(address) in held:
                        late.setdefault(name, []).append((address, kind))  # bound once the old one let go
                        continue
                    tls_context = context if ports[name].telnet_tls else None
                    server = await daemon.listen_one(hub, address, kind, tls_context)
                    new_servers.setdefault(name, []).append(server)
        except (StartupError, OSError) as exc:  # a busy address; a console-log directory it cannot make
            for name, servers in new_servers.items():
                if name in rebound:
                    daemon.close_listeners(daemon.hubs[name], only=servers)
            for hub in new_hubs.values():
                daemon.close_listeners(hub)
                await hub.close("the configuration reload was rejected")  # never started: closes little
            reason = str(exc) if isinstance(exc, StartupError) else exc.strerror or str(exc)
            raise ReloadRejected(new.source, [(at, reason)]) from None
        return _Prepared(plan, new_hubs, old_servers, late, grants, tls)

    def _new_hub(self, port: PortConfig, *, rebuilt: bool) -> PortHub:
        daemon = self._daemon
        if rebuilt:
            # Provisional: the old device keeps producing until apply closes it, and only then is the old
            # stream's end known; ``_apply`` re-bases the new hub there (``PortHub.continue_at``).
            end = daemon.hubs[port.name].ring.end
            return daemon.new_hub(port, start_offset=end, previous_end=end)
        offset = daemon.state.offsets.get(port.name, 0)
        return daemon.new_hub(port, start_offset=offset, previous_end=None)

    def _load_tls(self, config: Config) -> ssl.SSLContext | None:
        """Read the certificate files again (rotation), when some listener uses TLS."""
        tls = config.tls
        if tls is None or not (config.http.tls or any(p.telnet_tls for p in config.ports)):
            return None
        from ..tls import load_server_context

        try:
            return load_server_context(tls.cert_file, tls.key_file, tls.client_ca_file)
        except StartupError as exc:
            raise ReloadRejected(config.source, [("tls", str(exc))]) from None

    # -- apply: cannot be refused any more -------------------------------------------------------------
    async def _apply(self, prepared: _Prepared) -> list[tuple[str, str]]:
        """Returns the listeners that could not be bound, as ``(key, reason)``: the reload is then partial."""
        daemon = self._daemon
        unbound: list[tuple[str, str]] = []
        plan = prepared.plan
        effective = plan.effective
        ports = {p.name: p for p in effective.ports}
        for name in plan.removed:
            await daemon.close_port(name, f"console {name} was removed from the configuration (reload)")
        for change in plan.rebuilt:
            changed = ", ".join(change.fields)
            old = daemon.hubs[change.name]
            await daemon.close_port(
                change.name,
                f"console {change.name} is restarted by a configuration reload ({changed} changed); "
                "connect again",
            )
            # The old link is closed (no callback reaches the old hub any more): the stream continues at its
            # true end, so offsets stay strictly increasing and a client resuming there misses nothing.
            prepared.new_hubs[change.name].continue_at(old.ring.end)
            del old
        for name, servers in prepared.old_servers.items():
            if servers:
                daemon.close_listeners(daemon.hubs[name], only=servers)
        for name, hub in prepared.new_hubs.items():
            daemon.hubs[name] = hub
        for name, addresses in prepared.late.items():  # addresses the closed listeners just gave up
            hub = daemon.hubs[name]
            tls = self._tls.front if self._tls is not None else prepared.tls
            for address, kind in addresses:
                try:
                    await daemon.listen_one(hub, address, kind, tls if ports[name].telnet_tls else None)
                except StartupError as exc:  # the address was ours a moment ago: someone else took it
                    key = f"ports[{_index(effective, name)}]."
                    key += "telnet_readonly" if "-" in kind else "telnet"
                    log.error("reload_listen_failed", port=name, key=key, error=str(exc))
                    unbound.append((key, str(exc)))
        for change in (*plan.updated, *plan.rebound):
            hub = daemon.hubs[change.name]
            hub.reconfigure(ports[change.name])
            if "health_patterns" in change.fields:
                hub.health.configure(effective.alerts.patterns, hub.health.alert)
            if "enabled" in change.fields:
                await daemon.apply_switch(change.name)
        # The configured order, for listings.
        ordered = {name: daemon.hubs[name] for name in ports}
        daemon.hubs.clear()
        daemon.hubs.update(ordered)
        if prepared.grants is not None:
            self._swap_access(*prepared.grants)
        if prepared.tls is not None:
            if self._tls is None:
                self.tls_started(prepared.tls)  # the first TLS listener: a new telnet_tls port
                daemon.use_tls(prepared.tls)
            else:
                self._tls.rotate(prepared.tls)
        before = daemon.config.daemon
        daemon.config = effective
        if (before.log_level, before.log_format) != (effective.daemon.log_level, effective.daemon.log_format):
            from ..obs.logging import configure_logging

            configure_logging(effective.daemon.log_level, effective.daemon.log_format)
        await daemon.reconfigure_alerts(list(prepared.new_hubs.values()), changed=plan.alerts_changed)
        for hub in prepared.new_hubs.values():
            await daemon.start_hub(hub)
        daemon.audit.reopen()  # log rotation: `systemctl reload` after moving the file away
        daemon.after_reload()
        return unbound

    def _swap_access(self, grants: RoleGrants, directory: UserDirectory) -> None:
        daemon = self._daemon
        daemon.access.grants = grants
        if daemon.front_door is not None:
            authenticator = daemon.front_door.authenticator
            gone = withdrawn(authenticator.directory, directory)
            authenticator.use_directory(directory)
            if gone:
                self._end_withdrawn(gone)
        for hub in daemon.hubs.values():
            hub.revoke_unauthorized("access withdrawn by a configuration reload")

    def _end_withdrawn(self, gone: Withdrawn) -> None:
        """Sessions opened with a credential the reload withdrew end, on every transport: page sessions
        and WebSockets (the HTTP front end knows how each was proven), telnet, raw and SSH sessions."""
        daemon = self._daemon
        web: dict[str, int] = {}
        consoles: dict[str, int] = {}

        def counted(into: dict[str, int]) -> Callable[[Identity], str | None]:
            def why(who: Identity) -> str | None:
                reason = gone.reason(who)
                if reason is not None and who.user is not None:
                    into[who.user] = into.get(who.user, 0) + 1
                return reason

            return why

        http = daemon.http_frontend
        if http is not None:
            http.end_sign_ins(sessions=counted(web), websockets=counted(consoles), tickets=gone.reason)
        console = counted(consoles)
        for hub in daemon.hubs.values():
            # WebSockets were the HTTP front end's (their hub identity says session or ticket).
            hub.end_sessions(lambda s: None if s.identity.transport == "ws" else console(s.identity))
        for name, change in gone.changes():
            daemon.audit(
                "credential_revoked",
                user=name,
                change=str(change),
                web_sessions=web.get(name, 0),
                console_sessions=consoles.get(name, 0),
                result="revoked",
                reason=describe(change, name),
            )


def _listeners(port: PortConfig) -> Iterable[tuple[ListenAddress, str]]:
    kind = "raw" if port.raw else "telnet"
    if port.telnet is not None:
        yield port.telnet, kind
    if port.telnet_readonly is not None:
        yield port.telnet_readonly, kind + "-readonly"


def _key(address: ListenAddress) -> tuple[str, int]:
    return address.host, address.port


def _released(config: Config, names: set[str]) -> set[tuple[str, int]]:
    """The addresses of the running listeners of ports ``names``, which apply closes."""
    return {_key(address) for port in config.ports if port.name in names for address, _ in _listeners(port)}


def _index(config: Config, name: str) -> int:
    return next(i for i, port in enumerate(config.ports) if port.name == name)
