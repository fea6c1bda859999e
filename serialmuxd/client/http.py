"""The aiohttp client session for one daemon: TLS verified by default (``ca_file`` instead of the system's
CAs), an optional client certificate, the ``Authorization`` header on every request and WebSocket upgrade,
and the daemon's JSON errors turned into ``ClientError``."""

from __future__ import annotations

import json
import ssl
from typing import Any
from urllib.parse import quote

import aiohttp

from .errors import ClientError, Exit, api_error
from .settings import Settings

REQUEST_TIMEOUT_S = 30.0


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.url.startswith("https:"):
        if settings.cert_file is not None:
            raise ClientError("a client certificate needs an https:// URL", Exit.USAGE)
        return None
    try:
        context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
        if settings.cert_file is not None:
            context.load_cert_chain(
                str(settings.cert_file), str(settings.key_file) if settings.key_file else None
            )
    except (OSError, ssl.SSLError) as exc:
        raise ClientError(f"TLS set-up: {exc}", Exit.USAGE) from None
    return context


class Api:
    """Requests to one daemon; ``async with Api(...) as api``."""

    def __init__(self, settings: Settings, authorization: str | None) -> None:
        self.settings = settings
        self.base = settings.url
        self._headers = {"Authorization": authorization} if authorization else {}
        self._ssl = ssl_context(settings)
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True)
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=REQUEST_TIMEOUT_S),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    @staticmethod
    def port_path(name: str, tail: str = "") -> str:
        return f"/api/v1/ports/{quote(name, safe='')}" + (f"/{tail}" if tail else "")

    def _http(self) -> aiohttp.ClientSession:
        assert self.session is not None, "use Api as an async context manager"
        return self.session

    async def request(
        self, method: str, path: str, what: str, body: dict[str, Any] | None = None, **params: str
    ) -> Any:
        """A JSON request; the JSON answer, or ``ClientError`` with the daemon's message and exit code."""
        try:
            async with self._http().request(
                method,
                self.base + path,
                json=body if method != "GET" else None,
                params=params or None,
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError:
            raise ClientError(
                f"{what}: no answer from {self.base} within {REQUEST_TIMEOUT_S:g} s", Exit.UNAVAILABLE
            ) from None
        except aiohttp.ClientError as exc:
            raise unreachable(self.base, exc) from None
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if status >= 400:
            raise api_error(status, data, what)
        if data is None:
            raise ClientError(f"{what}: the daemon's answer is not JSON (HTTP {status})", Exit.FAILED)
        return data

    async def raw(self, path: str, what: str, **params: str) -> tuple[bytes, dict[str, str]]:
        """A GET whose answer is bytes (the scrollback), with its headers."""
        try:
            async with self._http().get(
                self.base + path, params=params, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
            ) as resp:
                data = await resp.read()
                if resp.status >= 400:
                    try:
                        body = json.loads(data)
                    except ValueError:
                        body = None
                    raise api_error(resp.status, body, what)
                return data, dict(resp.headers)
        except TimeoutError:
            raise ClientError(f"{what}: no answer from {self.base}", Exit.UNAVAILABLE) from None
        except aiohttp.ClientError as exc:
            raise unreachable(self.base, exc) from None


def unreachable(base: str, exc: BaseException) -> ClientError:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return ClientError(
            f"{base}: TLS certificate not trusted ({exc.certificate_error}); see --ca-file", Exit.UNAVAILABLE
        )
    if isinstance(exc, aiohttp.ClientSSLError):
        return ClientError(f"{base}: TLS failed: {exc}", Exit.UNAVAILABLE)
    reason = getattr(exc, "os_error", None) or exc
    return ClientError(f"cannot reach serialmuxd at {base}: {reason}", Exit.UNAVAILABLE)
