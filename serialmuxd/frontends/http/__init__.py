"""HTTP front end: versioned JSON API, WebSocket consoles, the browser console page, ``/healthz``.

``HttpFrontend`` runs the aiohttp app on the daemon's loop (``AppRunner`` + ``TCPSite`` in our own
lifecycle; ``web.run_app`` would own the loop) and talks to the daemon only through ``ConsoleControl``.
Modules by concern: ``guard`` (Host/Origin checks), ``errors`` (the JSON error shape and every mapping to
HTTP), ``rest`` (the API), ``ws`` (WebSocket sessions), ``pages`` (the console page), ``common`` (request
helpers), ``openapi`` (the API document, kept equal to the routes by a test).
"""

from __future__ import annotations

import ssl

from aiohttp import web

from ...config import HttpSettings, ListenAddress
from ...control import ConsoleControl
from ...errors import StartupError
from . import pages, rest
from .authn import authentication_middleware
from .common import CONTROL_KEY, SETTINGS_KEY
from .errors import ERROR_CODES, ApiError, errors_and_headers
from .guard import browser_guard
from .ws import WebSocketConsoles, WsConnection

__all__ = ["ERROR_CODES", "ApiError", "HttpFrontend", "WsConnection", "build_app"]

_WS_KEY: web.AppKey[WebSocketConsoles] = web.AppKey("websockets")


def build_app(control: ConsoleControl, settings: HttpSettings) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        # In this order: the browser guard and the error shape wrap everything, authentication every handler.
        middlewares=[errors_and_headers(browser_guard(settings)), authentication_middleware()],
    )
    app[CONTROL_KEY] = control
    app[SETTINGS_KEY] = settings
    websockets = WebSocketConsoles()
    app[_WS_KEY] = websockets
    rest.add_routes(app)
    app.router.add_get("/api/v1/ports/{name}/ws", websockets.handle)
    pages.add_routes(app)
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
    ) -> None:
        if settings.listen is None:
            raise ValueError("HttpFrontend needs http.listen")
        self._listen: ListenAddress = settings.listen
        self._app = build_app(control, settings)
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

    async def stop(self) -> None:
        """Close WebSockets (on_shutdown), then the listener and connections."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
