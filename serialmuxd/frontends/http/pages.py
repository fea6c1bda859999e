"""The browser console page (``serialmuxd.web``): our sources, and xterm.js fetched at install time."""

from __future__ import annotations

import structlog
from aiohttp import web

from ...web import CONSOLE_PAGE, INDEX_PAGE, MISSING_VENDOR_HINT, STATIC_DIR, VENDOR_DIR, missing_vendor_files
from .common import console

log = structlog.get_logger("serialmuxd.http")


async def page_index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(INDEX_PAGE, headers={"Cache-Control": "no-cache"})


async def page_console(request: web.Request) -> web.StreamResponse:
    console(request)  # 404 for unknown names, before any page is served
    return web.FileResponse(CONSOLE_PAGE, headers={"Cache-Control": "no-cache"})


def add_routes(app: web.Application) -> None:
    missing = missing_vendor_files()
    if missing:
        log.warning("console_page_incomplete", missing=missing, hint=MISSING_VENDOR_HINT)
    app.router.add_get("/", page_index)
    app.router.add_get("/console/{name}", page_console)
    if VENDOR_DIR.is_dir():
        app.router.add_static("/static/vendor/", VENDOR_DIR)
    app.router.add_static("/static/", STATIC_DIR)
