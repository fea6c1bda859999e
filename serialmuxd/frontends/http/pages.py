"""The browser console page (``serialmuxd.web``): our sources, and xterm.js fetched at install time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from aiohttp import web

from ...web import CONSOLE_PAGE, INDEX_PAGE, MISSING_VENDOR_HINT, STATIC_DIR, VENDOR_DIR, missing_vendor_files
from .common import console
from .errors import ApiError

log = structlog.get_logger("serialmuxd.http")


async def page_index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(INDEX_PAGE, headers={"Cache-Control": "no-cache"})


async def page_console(request: web.Request) -> web.StreamResponse:
    console(request)  # 404 for unknown names, before any page is served
    return web.FileResponse(CONSOLE_PAGE, headers={"Cache-Control": "no-cache"})


def static_files(directory: Path) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Serve the regular files in ``directory`` (no subdirectories are needed, none are listed).

    Not ``add_static``: it answers a directory with 403, which our error shape had turned into 400
    "Forbidden", and a missing file with an empty 404.  Here everything that is not a regular file inside
    ``directory`` once resolved (a directory, a missing file, ``..`` in any encoding, an absolute path, a
    symlink leading out) is the same JSON 404, which also tells a prober nothing about what exists.
    """
    root = directory.resolve()

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["path"]
        try:
            target = (root / name).resolve()
            found = target.is_relative_to(root) and target.is_file()
        except (OSError, ValueError):  # NUL in the name, a symlink loop, a name too long
            found = False
        if not found:
            raise ApiError("not_found", f"no file {name[:80]!r} here")
        return web.FileResponse(target)

    return serve


def add_routes(app: web.Application) -> None:
    missing = missing_vendor_files()
    if missing:
        log.warning("console_page_incomplete", missing=missing, hint=MISSING_VENDOR_HINT)
    app.router.add_get("/", page_index)
    app.router.add_get("/console/{name}", page_console)
    # Matched in this order: /static/vendor/... is the vendor directory whenever it exists.
    if VENDOR_DIR.is_dir():
        app.router.add_get("/static/vendor/{path:.*}", static_files(VENDOR_DIR))
    app.router.add_get("/static/{path:.*}", static_files(STATIC_DIR))
