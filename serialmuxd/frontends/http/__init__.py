"""HTTP front end: versioned JSON API, WebSocket consoles, the browser console page, ``/healthz``.

``HttpFrontend`` runs the aiohttp app on the daemon's loop (``AppRunner`` + ``TCPSite`` in our own
lifecycle; ``web.run_app`` would own the loop) and talks to the daemon only through ``ConsoleControl``.
Modules by concern: ``guard`` (Host/Origin checks), ``errors`` (the JSON error shape and every mapping to
HTTP), ``authn`` (who is asking), ``signin`` (the page's sign-in and console tickets), ``oidc_signin`` (the
page's sign-in with the OpenID provider), ``sessions`` (what the app keeps for them, and the audit record
of HTTP events), ``rest`` (the API), ``recording`` (scrollback as an asciicast recording), ``ws``
(WebSocket sessions), ``pages`` (the console page), ``common`` (request helpers), ``openapi`` (the API
document, kept equal to the routes by a test).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable

from aiohttp import web

from ...auth.tickets import TicketBook
from ...auth.websessions import WebSessions
from ...config import AuthSettings, HttpSettings, ListenAddress
from ...control import ConsoleControl
from ...errors import StartupError
from ...obs.audit import AuditFn, AuditLog
from . import metrics, oidc_signin, pages, recording, rest, signin, signins
from .authn import authentication_middleware
from .common import CONTROL_KEY, SETTINGS_KEY
from .errors import ERROR_CODES, ApiError, errors_and_headers
from .guard import browser_guard
from .sessions import AUDIT_KEY, CLOCK_KEY, SESSIONS_KEY, TICKETS_KEY
from .ws import WebSocketConsoles, WsConnection

__all__ = ["ERROR_CODES", "ApiError", "HttpFrontend", "WsConnection", "build_app"]

_WS_KEY: web.AppKey[WebSocketConsoles] = web.AppKey("websockets")


def build_app(
    control: ConsoleControl,
    settings: HttpSettings,
    *,
    audit: AuditFn | None = None,
    auth: AuthSettings | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    """``audit``: the daemon's audit trail (without one, HTTP events reach the daemon's log only);
    ``auth``: the page sessions' lifetimes (``[auth]``'s defaults without) and ``[auth.oidc]`` for the
    page's OIDC sign-in (its client secret file is read here: a ``StartupError`` naming it if unusable);
    ``clock``: monotonic seconds for session, ticket and sign-in flow lifetimes (tests pass their own)."""
    lifetimes = auth if auth is not None else AuthSettings()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        # In this order: the browser guard and the error shape wrap everything, authentication every handler.
        middlewares=[errors_and_headers(browser_guard(settings)), authentication_middleware()],
    )
    app[CONTROL_KEY] = control
    app[SETTINGS_KEY] = settings
    app[AUDIT_KEY] = audit if audit is not None else AuditLog(None)
    app[CLOCK_KEY] = clock
    app[SESSIONS_KEY] = WebSessions(lifetimes.session_idle_s, lifetimes.session_max_s)
    app[TICKETS_KEY] = TicketBook()
    signins.install(app, app[SESSIONS_KEY], app[TICKETS_KEY], app[AUDIT_KEY])
    websockets = WebSocketConsoles()
    app[_WS_KEY] = websockets
    rest.add_routes(app)
    recording.add_routes(app)
    app.router.add_get("/api/v1/ports/{name}/ws", websockets.handle)
    signin.add_routes(app)
    oidc_signin.add_routes(app, auth.oidc if auth is not None else None)
    pages.add_routes(app)
    metrics.add_routes(app)
    app.on_shutdown.append(_close_websockets)
    return app


async def _close_websockets(app: web.Application) -> None:
    app[_WS_KEY].close_all("serialmuxd is shutting down")


class HttpFrontend:
    """The HTTP listener: ``start()`` binds and returns the bound address, ``stop()`` closes everything."""

    def __init__(
        self,
        control: ConsoleControl,
        settings: HttpSettings,
        *,
        shutdown_timeout_s: float,
        tls: ssl.SSLContext | None = None,
        audit: AuditFn | None = None,
        auth: AuthSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if settings.listen is None:
            raise ValueError("HttpFrontend needs http.listen")
        self._listen: ListenAddress = settings.listen
        self._app = build_app(control, settings, audit=audit, auth=auth, clock=clock)
        self._shutdown_timeout_s = shutdown_timeout_s
        self._tls = tls
        self._runner: web.AppRunner | None = None

    async def start(self) -> tuple[str, int]:
        """Bind; a busy or unusable address raises ``StartupError`` naming it."""
        runner = web.AppRunner(self._app, shutdown_timeout=self._shutdown_timeout_s, access_log=None)
        await runner.setup()
        site = web.TCPSite(
            runner, self._listen.host, self._listen.port, reuse_address=True, ssl_context=self._tls
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise StartupError(f"cannot listen on {self._listen} (HTTP): {exc.strerror or exc}") from exc
        self._runner = runner
        host, port = runner.addresses[0][:2]
        return str(host), int(port)

    def end_sign_ins(
        self, *, sessions: signins.Reason, websockets: signins.Reason, tickets: signins.Reason
    ) -> tuple[int, int]:
        """A reload withdrew credentials: end the page sessions, close the WebSockets (not opened under a
        page session) and refuse the tickets whose credential ``sessions``, ``websockets`` or ``tickets``
        gives a reason for; returns how many sessions and WebSockets (a session's own included) ended."""
        return self._app[signins.SIGNINS_KEY].end_where(sessions, websockets, tickets)

    async def stop(self) -> None:
        """Close WebSockets (on_shutdown), then the listener and connections."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
