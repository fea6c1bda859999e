"""The page's sign-in and the console tickets.

* ``GET /signin``: the sign-in form (``web/static/signin.html``), open without credentials.
* ``POST /api/v1/session`` ``{"user", "password"}``: checked like Basic (the authenticator's throttle and
  audit, the same ``401``/``429``); sets the ``serialmuxd_session`` cookie and answers ``{"user", "csrf"}``.
  A sign-in from a browser that still holds a session ends that one first.
* ``GET /api/v1/session``: who this request is authenticated as, and for a cookie session its CSRF token
  (the page reads it here after every load; other sites cannot read the answer).
* ``DELETE /api/v1/session`` (``?everywhere=1``: every session of this user): signs out, clears the cookie,
  audited ``logout``.
* ``POST /api/v1/ports/{name}/ticket`` ``{"mode": "rw"|"ro"}``: a single-use ticket for that console's
  WebSocket (``auth.tickets``), for the page and for clients that cannot send credentials on an upgrade;
  audited ``ticket_issued``.  Whoever may view the console may get one; what the session may then do is
  the hub's policy, as for any other upgrade.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...auth.tickets import MODES
from ...auth.websessions import SIGNED_IN_AGAIN
from ...web import STATIC_DIR
from .authn import check_password
from .common import console, control, identity, json_body
from .errors import ApiError
from .sessions import (
    SESSION_COOKIE,
    SESSIONS_KEY,
    TICKETS_KEY,
    WEB_SESSION_KEY,
    audit,
    cookie_attributes,
    now,
)

SIGNIN_PAGE = STATIC_DIR / "signin.html"
MAX_USER_CHARS = 256
MAX_PASSWORD_CHARS = 4096  # argon2 would take more, but nobody types more; bounds the worker's input
_NO_STORE = {"Cache-Control": "no-store"}


async def page_signin(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(SIGNIN_PAGE, headers={"Cache-Control": "no-cache"})


async def get_session(request: web.Request) -> web.Response:
    who = identity(request, "http")
    body: dict[str, Any] = {
        "auth": control(request).authentication is not None,
        "user": who.user,
        "method": who.method or None,
    }
    session = request.get(WEB_SESSION_KEY)
    if session is not None:
        store = request.app[SESSIONS_KEY]
        body["csrf"] = session.csrf_token
        body["idle_timeout_s"] = store.idle_s
        body["expires_in"] = max(0, round(store.max_s - (now(request) - session.created_s)))
    return web.json_response(body, headers=_NO_STORE)


async def post_session(request: web.Request) -> web.Response:
    door = control(request).authentication
    if door is None:
        raise ApiError("not_supported", "this serialmuxd has no [auth]: there is nothing to sign in to")
    body = await json_body(request)
    user, password = body.get("user"), body.get("password")
    if (
        not isinstance(user, str)
        or not isinstance(password, str)
        or not 0 < len(user) <= MAX_USER_CHARS
        or len(password) > MAX_PASSWORD_CHARS
    ):
        raise ApiError("bad_request", 'body must be {"user": "NAME", "password": "PASSWORD"}')
    found = await check_password(request, door, identity(request, "http"), user, password)
    store = request.app[SESSIONS_KEY]
    previous = request.cookies.get(SESSION_COOKIE)
    if previous:
        store.revoke(previous, SIGNED_IN_AGAIN)  # one browser, one session: its cookie is overwritten
    session_id, csrf_token = store.create(found, now(request))
    response = web.json_response({"user": found.user, "csrf": csrf_token}, headers=_NO_STORE)
    response.set_cookie(SESSION_COOKIE, session_id, **cookie_attributes(request))
    return response


async def delete_session(request: web.Request) -> web.Response:
    session = request.get(WEB_SESSION_KEY)
    if session is None:
        how = identity(request, "http").method or "no credentials"
        raise ApiError(
            "bad_request", f"no signed-in session to end (this request was authenticated by {how})"
        )
    store = request.app[SESSIONS_KEY]
    everywhere = request.query.get("everywhere") == "1"
    if everywhere:
        ended = len(store.revoke_user(session.user))
    else:
        ended = int(store.revoke(request.cookies.get(SESSION_COOKIE, "")) is not None)
    audit("logout", request, sessions=ended, everywhere=everywhere, result="ok")
    response = web.json_response({"ok": True, "sessions": ended}, headers=_NO_STORE)
    attributes = cookie_attributes(request)
    response.del_cookie(
        SESSION_COOKIE,
        path=attributes["path"],
        secure=attributes["secure"],
        httponly=attributes["httponly"],
        samesite=attributes["samesite"],
    )
    return response


async def post_ticket(request: web.Request) -> web.Response:
    target = console(request)  # 404 for a console the caller may not view, as everywhere
    body = await json_body(request)
    mode = body.get("mode", "rw")
    if mode not in MODES:
        raise ApiError("bad_request", 'body must be {"mode": "rw"} or {"mode": "ro"}')
    session = request.get(WEB_SESSION_KEY)
    book = request.app[TICKETS_KEY]
    value, ticket = book.issue(
        identity(request, "http"),
        target.name,
        mode,
        now(request),
        web_session=session.label if session is not None else None,
        web_session_key=session.key if session is not None else None,
    )
    audit("ticket_issued", request, port=target.name, mode=mode, grant_id=ticket.label, result="ok")
    return web.json_response(
        {"ticket": value, "expires_in": round(book.lifetime_s), "mode": mode}, headers=_NO_STORE
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/signin", page_signin)
    r.add_get("/api/v1/session", get_session)
    r.add_post("/api/v1/session", post_session)
    r.add_delete("/api/v1/session", delete_session)
    r.add_post("/api/v1/ports/{name}/ticket", post_ticket)
