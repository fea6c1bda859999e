"""The console page's static files through a real daemon: files are served; a directory, a missing file and
every way out of the directory (``..``, percent-encoded dots and slashes, an absolute path, NUL) are a JSON
404 with the security headers.  Requests go over raw sockets, since an HTTP client would normalise ``..``
away before sending."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from .support import GuestPty, TcpClient, running_daemon

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def port(tmp_path: Path) -> AsyncIterator[int]:
    guest = GuestPty()
    toml = f"""
[daemon]
log_level = "warning"
state_dir = "{tmp_path / "state"}"

[http]
listen = "127.0.0.1:0"

[[ports]]
name = "vm1"
device = "tty:{guest.path}"
"""
    async with running_daemon(toml, cleanup=guest.close) as daemon:
        assert daemon.http_address is not None
        yield daemon.http_address[1]


async def get(port: int, target: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    client = await TcpClient.connect("127.0.0.1", port)
    try:
        await client.send(
            f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        await client.wait_eof()
    finally:
        await client.close()
    head, _, body = bytes(client.buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def assert_secured(headers: dict[str, str]) -> None:
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]


@pytest.mark.parametrize(
    "target",
    [
        "/static/",  # the directory itself (was 400 "Forbidden")
        "/static/vendor/",
        "/static/vendor",
        "/static/nope.js",
        "/static/vendor/nope.js",
        "/static/../__init__.py",  # serialmuxd/web/__init__.py is next to the directory
        "/static/../../config.py",
        "/static/%2e%2e/__init__.py",
        "/static/%2e%2e/",
        "/static/..%2f__init__.py",
        "/static/%2e%2e%2f%2e%2e%2fconfig.py",
        "/static/vendor/../../__init__.py",
        "/static/vendor/%2e%2e/%2e%2e/__init__.py",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/static/%00",
        "/static/style.css%00.js",
    ],
)
async def test_what_is_not_a_file_in_the_directory_is_a_json_404(port: int, target: str) -> None:
    status, headers, body = await get(port, target)
    assert status == 404, (target, body[:200])
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)
    assert error["code"] == "not_found" and isinstance(error["message"], str)
    assert b"import" not in body and b"root:" not in body
    assert_secured(headers)


@pytest.mark.parametrize(
    ("target", "content_type"),
    [
        ("/static/style.css", "text/css"),
        ("/static/index.js", "javascript"),
        ("/static/vendor/xterm.css", "text/css"),
    ],
)
async def test_files_are_served_with_the_security_headers(port: int, target: str, content_type: str) -> None:
    status, headers, body = await get(port, target)
    assert status == 200 and body and content_type in headers["content-type"]
    assert_secured(headers)
    head_status, head_headers, head_body = await get(port, target, "HEAD")
    assert (
        head_status == 200
        and head_body == b""
        and head_headers["content-length"] == headers["content-length"]
    )
