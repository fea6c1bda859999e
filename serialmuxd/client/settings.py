"""Where the daemon is and who we are: flags, then the environment, then the client config file
(``$SERIALMUX_CONFIG``, else ``$XDG_CONFIG_HOME/serialmux/config.toml``, else
``~/.config/serialmux/config.toml``).  Each setting is taken from the first of those that has it.

Secrets never come from argv: a token is read from a file (``token_file``; refused when others may read
it), a password from ``$SERIALMUX_PASSWORD`` or a prompt without echo.  A URL with credentials in it is
refused for the same reason.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ClientError, Exit

DEFAULT_URL = "http://127.0.0.1:8480"
# setting -> environment variable; the config file uses the setting's name as its key.
ENVIRONMENT = {
    "url": "SERIALMUX_URL",
    "token_file": "SERIALMUX_TOKEN_FILE",
    "user": "SERIALMUX_USER",
    "ca_file": "SERIALMUX_CA_FILE",
    "cert_file": "SERIALMUX_CERT_FILE",
    "key_file": "SERIALMUX_KEY_FILE",
    "escape": "SERIALMUX_ESCAPE",
}
PASSWORD_ENV = "SERIALMUX_PASSWORD"
CONFIG_ENV = "SERIALMUX_CONFIG"
FILE_KEYS = frozenset(ENVIRONMENT)
_PATH_KEYS = ("token_file", "ca_file", "cert_file", "key_file")


@dataclass(frozen=True, slots=True)
class Settings:
    url: str  # scheme://host[:port], no trailing slash
    token_file: Path | None
    user: str | None
    password: str | None  # from the environment only
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    escape: str


def config_path(env: Mapping[str, str]) -> Path:
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "serialmux" / "config.toml"


def load_file(path: Path, required: bool) -> dict[str, str]:
    """The config file's settings (strings; relative paths taken from the file's directory)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise ClientError(f"{path}: no such file", Exit.USAGE) from None
        return {}
    except OSError as exc:
        raise ClientError(f"{path}: {exc.strerror}", Exit.USAGE) from None
    try:
        data: dict[str, Any] = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ClientError(f"{path}: {exc}", Exit.USAGE) from None
    out: dict[str, str] = {}
    for key, value in data.items():
        if key not in FILE_KEYS:
            known = ", ".join(sorted(FILE_KEYS))
            raise ClientError(f"{path}: {key}: unknown key (known: {known})", Exit.USAGE)
        if not isinstance(value, str):
            raise ClientError(f"{path}: {key}: must be a string", Exit.USAGE)
        if key in _PATH_KEYS:
            value = str(path.parent / Path(value).expanduser())
        out[key] = value
    return out


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientError(f"--url must be http://HOST[:PORT] or https://HOST[:PORT], got {url!r}", Exit.USAGE)
    if parts.username is not None or parts.password is not None:
        raise ClientError("--url must not carry credentials (use a token file or --user)", Exit.USAGE)
    if parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ClientError(f"--url is the daemon's address only (no path), got {url!r}", Exit.USAGE)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ClientError(f"--url has a bad port: {url!r}", Exit.USAGE) from None
    return f"{parts.scheme}://{parts.netloc}"


def resolve(flags: Mapping[str, str | None], env: Mapping[str, str], file: Mapping[str, str]) -> Settings:
    """Flags first, then the environment, then the file."""

    def pick(key: str) -> str | None:
        for source in (flags.get(key), env.get(ENVIRONMENT[key]), file.get(key)):
            if source:
                return source
        return None

    def path(key: str) -> Path | None:
        value = pick(key)
        return Path(value).expanduser() if value else None

    cert, key = path("cert_file"), path("key_file")
    if key is not None and cert is None:
        raise ClientError("a client key (key_file) needs its certificate (cert_file)", Exit.USAGE)
    return Settings(
        url=check_url(pick("url") or DEFAULT_URL),
        token_file=path("token_file"),
        user=pick("user"),
        password=env.get(PASSWORD_ENV) or None,
        ca_file=path("ca_file"),
        cert_file=cert,
        key_file=key,
        escape=pick("escape") or "~",
    )


def read_token(path: Path) -> str:
    """A token from its file: the first line, which only its owner may read."""
    try:
        info = path.stat()
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ClientError(f"token file {path}: {exc.strerror}", Exit.USAGE) from None
    except UnicodeDecodeError:
        raise ClientError(f"token file {path}: not UTF-8 text", Exit.USAGE) from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ClientError(f"token file {path}: others may read it; chmod 600 {path}", Exit.USAGE)
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise ClientError(f"token file {path}: empty", Exit.USAGE)
    return token


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name may resolve anywhere
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def refuse_plain_text_credentials(settings: Settings) -> None:
    """A password or token goes over http:// only to this host: anywhere else it would cross the network
    in clear (the daemon itself serves remote clients only over TLS)."""
    parts = urlsplit(settings.url)
    if parts.scheme == "http" and not _loopback(parts.hostname or ""):
        raise ClientError(
            f"refusing to send a password or token over plain http to {parts.hostname}: use https://",
            Exit.USAGE,
        )


def authorization(settings: Settings, prompt: Callable[[str], str]) -> str | None:
    """The ``Authorization`` header value: a token (Bearer), a user and password (Basic), or None (a
    client certificate, or a daemon without [auth]).  ``prompt`` asks for a password without echo."""
    if settings.token_file is not None or settings.user is not None:
        refuse_plain_text_credentials(settings)
    if settings.token_file is not None:
        return "Bearer " + read_token(settings.token_file)
    if settings.user is not None:
        if ":" in settings.user:
            raise ClientError("a user name cannot contain ':'", Exit.USAGE)
        password = settings.password
        if password is None:
            try:
                password = prompt(f"password for {settings.user}: ")
            except (EOFError, OSError):
                raise ClientError(
                    f"no password for {settings.user}: set {PASSWORD_ENV} or run from a terminal", Exit.USAGE
                ) from None
        pair = f"{settings.user}:{password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")
    return None


def environment() -> Mapping[str, str]:
    return os.environ
