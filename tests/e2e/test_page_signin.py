"""Signing in on the console page, in real headless Chromium against a real daemon with ``[auth]``.

* A browser that is not signed in is sent to ``/signin`` (no Basic dialog); a wrong password is announced
  in the form's alert region with the focus back on the password; the right one lands on the console it
  asked for, which it may write: typing reaches the guest's shell.
* A console the user may only view: the page shows read-only, and typing never reaches the guest.  Two
  proofs: the page's own record of what it sent on its WebSocket (no binary frame), and a marker typed by
  another writer afterwards that arrives at the guest with nothing before it.
* The page's WebSocket carries a single-use ticket and nothing else secret in its URL; the cookie is
  HttpOnly (the page's script cannot read it) and SameSite=Strict, and Secure over HTTPS.
* Sign out: back on the sign-in page, and the old cookie no longer works.
* axe-core (from node_modules, injected by Playwright with ``bypass_csp``) finds no WCAG 2.1 A/AA violation
  on the sign-in page (signed out, with an error shown, and signed in), the console list and a console.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import pytest_asyncio
import trustme

from serialmuxd.auth.passwords import hash_password
from serialmuxd.auth.tokens import new_token, token_digest
from serialmuxd.daemon import Daemon
from serialmuxd.web import missing_vendor_files

from .support import GuestPty, running_daemon
from .test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS

try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError:  # pragma: no cover - depends on the environment
    pytest.skip("playwright is not installed (it is in the 'test' extra)", allow_module_level=True)

if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
PASSWORD = "page-Pa55word-e2e-5b1d"
COOKIE = "serialmuxd_session"
WCAG21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]

# The page's WebSockets as it opened and used them (an init script runs before the page's own): what
# the page sent cannot be hidden by the network, and the URLs show what went into them.
RECORD_SOCKETS = """
window.__ws = { urls: [], binary: 0, text: 0 };
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(url, protocols) {
    window.__ws.urls.push(String(url));
    super(url, protocols);
  }
  send(data) {
    if (typeof data === "string") window.__ws.text += 1;
    else window.__ws.binary += 1;
    return super.send(data);
  }
};
"""

# The DOM renderer draws the screen as text in .xterm-rows; spaces may be U+00A0.
SCREEN_HAS = """(needle) => {
  const rows = document.querySelector('.xterm-rows');
  return rows !== null && rows.textContent.replace(/\\u00a0/g, ' ').includes(needle);
}"""


@dataclass
class Env:
    daemon: Daemon
    base: str
    guest: GuestPty  # vm2's guest side: alice may only watch vm2
    admin_token: str


def _config(tmp_path: Path, guest: GuestPty, admin_token: str, http: str) -> str:
    users = tmp_path / "users.toml"
    users.write_text(
        f"""
[[users]]
name = "alice"
password_hash = "{hash_password(PASSWORD)}"
grants = [{{ role = "operator", ports = ["vm1"] }}, {{ role = "viewer", ports = ["group:web"] }}]

[[tokens]]
name = "root-bot"
sha256 = "{token_digest(admin_token)}"
grants = [{{ role = "admin", ports = ["*"] }}]
"""
    )
    users.chmod(0o600)
    return f"""
[daemon]
log_level = "warning"
state_dir = "{tmp_path / "state"}"
[auth]
users_file = "{users}"
{http}
[[ports]]
name = "vm1"
device = "exec:/usr/bin/env 'PS1=guest$ ' /bin/sh -i"
[[ports]]
name = "vm2"
device = "tty:{guest.path}"
group = "web"
"""


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    missing = missing_vendor_files()
    assert not missing, f"serialmuxd/web/vendor lacks {missing}: run `pip install -e .` (needs npm)"
    guest = GuestPty()
    token = new_token()
    toml = _config(tmp_path, guest, token, '[http]\nlisten = "127.0.0.1:0"')
    async with running_daemon(toml, online=("vm1", "vm2"), cleanup=guest.close) as daemon:
        assert daemon.http_address is not None
        host, port = daemon.http_address
        yield Env(daemon, f"http://{host}:{port}", guest, token)


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def _wait_text(page: Page, element_id: str, needle: str) -> None:
    await page.wait_for_function(
        "([id, needle]) => (document.getElementById(id)?.textContent || '').includes(needle)",
        arg=[element_id, needle],
        timeout=TIMEOUT_MS,
    )


async def _sign_in(page: Page, password: str = PASSWORD) -> None:
    """Fill in the form from the keyboard, as a person would: the user field has the focus on load."""
    await page.locator("#user").wait_for(timeout=TIMEOUT_MS)
    await page.wait_for_function("document.activeElement?.id === 'user'", timeout=TIMEOUT_MS)
    await page.keyboard.type("alice")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.id") == "password"
    await page.keyboard.type(password)
    await page.keyboard.press("Enter")


async def _axe_violations(page: Page) -> list[dict[str, Any]]:
    if not await page.evaluate("typeof window.axe === 'object'"):
        await page.add_script_tag(path=str(AXE))
    result = await page.evaluate(
        "(tags) => axe.run(document, { runOnly: { type: 'tag', values: tags } })", WCAG21_AA
    )
    return [
        {"id": v["id"], "help": v["help"], "nodes": [n["target"] for n in v["nodes"]]}
        for v in result["violations"]
    ]


async def _marker_from_another_writer(env: Env, marker: bytes) -> None:
    """root-bot takes vm2's writer lease over a WebSocket (Bearer) and types ``marker``."""
    url = env.base.replace("http://", "ws://", 1) + "/api/v1/ports/vm2/ws?mode=rw"
    headers = {"Authorization": f"Bearer {env.admin_token}"}
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, headers=headers) as ws,
        asyncio.timeout(TIMEOUT_MS / 1000),
    ):
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT and json.loads(msg.data).get("kind") == "write_granted":
                await ws.send_bytes(marker)
                break
        await env.guest.expect(marker)


async def test_sign_in_type_watch_and_sign_out_in_chromium(env: Env, browser: Browser) -> None:
    problems: list[str] = []
    dialogs: list[str] = []
    context = await browser.new_context(viewport={"width": 1100, "height": 640})
    await context.add_init_script(RECORD_SOCKETS)
    page = await context.new_page()
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))

    # -- not signed in: the console page sends the browser to the sign-in form, not to a Basic dialog
    await page.goto(f"{env.base}/console/vm1")
    await page.wait_for_url(f"{env.base}/signin?next=%2Fconsole%2Fvm1", timeout=TIMEOUT_MS)
    await _sign_in(page, "not-the-password")
    await _wait_text(page, "error", "Wrong user name or password.")
    assert await page.evaluate("document.activeElement.id") == "password"
    assert await page.get_attribute("#password", "aria-invalid") == "true"
    assert await page.get_attribute("#error", "role") == "alert"
    assert await page.input_value("#password") == ""

    # -- the right password: back to the console asked for, which alice may write
    await page.fill("#user", "")
    await page.focus("#user")
    await _sign_in(page)
    await page.wait_for_url(f"{env.base}/console/vm1", timeout=TIMEOUT_MS)
    await _wait_text(page, "st-conn", "you are typing")
    await _wait_text(page, "whoami", "Signed in as alice")
    assert await page.locator("#btn-signout").is_visible()
    await page.wait_for_function(SCREEN_HAS, arg="guest$", timeout=TIMEOUT_MS)
    await page.locator("#terminal").click()
    await page.keyboard.type("echo hi-$((6*7))")
    await page.keyboard.press("Enter")
    await page.wait_for_function(SCREEN_HAS, arg="hi-42", timeout=TIMEOUT_MS)

    # The socket was opened with a ticket, and nothing else secret is in its URL.
    sockets = await page.evaluate("window.__ws")
    query = parse_qs(urlsplit(sockets["urls"][-1]).query)
    assert set(query) == {"mode", "ticket"} and query["mode"] == ["rw"] and len(query["ticket"][0]) == 43
    # The cookie: HttpOnly (invisible to the page's script), SameSite=Strict, not Secure over plain HTTP.
    cookies = {c["name"]: c for c in await context.cookies()}
    session = cookies[COOKIE]
    assert session["httpOnly"] and session["sameSite"] == "Strict" and not session["secure"]
    assert COOKIE not in await page.evaluate("document.cookie")

    # -- the console list, grouped: vm2 is in group "web"; alice may only watch it
    await page.goto(f"{env.base}/")
    group = page.locator("table.ports", has=page.locator("caption", has_text="Group web"))
    await group.get_by_role("link", name="vm2", exact=True).wait_for(timeout=TIMEOUT_MS)
    assert await page.locator("#port-rows").get_by_role("link", name="vm1", exact=True).count() == 1
    await group.get_by_role("link", name="vm2", exact=True).click()
    await page.wait_for_url(f"{env.base}/console/vm2", timeout=TIMEOUT_MS)
    await _wait_text(page, "st-conn", "read-only (viewer)")
    await _wait_text(page, "st-note", "alice may not type into this console on vm2")
    await env.guest.send(b"guest says hello\r\n")
    await page.wait_for_function(SCREEN_HAS, arg="guest says hello", timeout=TIMEOUT_MS)
    before = await page.evaluate("window.__ws")
    await page.locator("#terminal").click()
    await page.keyboard.type("echo typed-by-a-viewer")
    await page.keyboard.press("Enter")
    await _wait_text(page, "st-note", "Typing is not sent: you are read-only")
    after = await page.evaluate("window.__ws")
    assert after["binary"] == before["binary"] == 0, after  # the page sent no console bytes at all
    # The later marker: another writer's bytes reach the guest, and nothing came before them.
    await _marker_from_another_writer(env, b"MARK-after-viewer\r")
    assert bytes(env.guest.buffer) == b"MARK-after-viewer\r"

    # -- sign out: back on the sign-in page, and the cookie no longer opens anything
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(f"{env.base}/signin", timeout=TIMEOUT_MS)
    assert COOKIE not in {c["name"] for c in await context.cookies()}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{env.base}/api/v1/ports", headers={"Cookie": f"{COOKIE}={session['value']}"}) as r,
    ):
        assert r.status == 401
    await page.goto(f"{env.base}/console/vm1")
    await page.wait_for_url(f"{env.base}/signin?next=%2Fconsole%2Fvm1", timeout=TIMEOUT_MS)

    assert dialogs == [] and problems == []
    await context.close()


async def test_no_wcag_21_aa_violations_signed_in_and_out(env: Env, browser: Browser) -> None:
    assert AXE.is_file(), "node_modules/axe-core is missing: run `npm ci`"
    # bypass_csp: our CSP allows only our own scripts, and axe is injected from the test.
    context = await browser.new_context(bypass_csp=True, viewport={"width": 1100, "height": 640})
    page = await context.new_page()
    found: dict[str, list[dict[str, Any]]] = {}

    await page.goto(f"{env.base}/")  # signed out: the pages send the browser to the form
    await page.wait_for_url(f"{env.base}/signin?next=%2F", timeout=TIMEOUT_MS)
    await page.locator("#user").wait_for(timeout=TIMEOUT_MS)
    found["sign-in, signed out"] = await _axe_violations(page)
    await _sign_in(page, "wrong")
    await _wait_text(page, "error", "Wrong user name or password.")
    found["sign-in, with an error"] = await _axe_violations(page)
    await page.fill("#user", "")
    await page.focus("#user")
    await _sign_in(page)
    await page.wait_for_url(f"{env.base}/", timeout=TIMEOUT_MS)
    await page.get_by_role("link", name="vm2", exact=True).wait_for(timeout=TIMEOUT_MS)
    await _wait_text(page, "whoami", "Signed in as alice")
    found["console list, signed in"] = await _axe_violations(page)
    await page.goto(f"{env.base}/console/vm1")
    await _wait_text(page, "st-conn", "you are typing")
    found["console, signed in"] = await _axe_violations(page)
    await page.goto(f"{env.base}/signin")
    await _wait_text(page, "signed-in", "You are signed in as alice")
    found["sign-in, signed in"] = await _axe_violations(page)
    await page.goto(f"{env.base}/console/vm1")
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(f"{env.base}/signin", timeout=TIMEOUT_MS)
    await page.locator("#user").wait_for(timeout=TIMEOUT_MS)
    found["sign-in, after signing out"] = await _axe_violations(page)

    assert {page: v for page, v in found.items() if v} == {}
    await context.close()


async def test_the_cookie_is_secure_over_https(tmp_path: Path, browser: Browser) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    key.chmod(0o600)
    guest = GuestPty()
    http = f'[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n[http]\nlisten = "127.0.0.1:0"\ntls = true'
    async with running_daemon(_config(tmp_path, guest, new_token(), http), cleanup=guest.close) as daemon:
        assert daemon.http_address is not None
        base = f"https://127.0.0.1:{daemon.http_address[1]}"
        # The test's CA is not in Chromium's store: accept this one certificate error, nothing else changes.
        context = await browser.new_context(ignore_https_errors=True)
        page = await context.new_page()
        await page.goto(f"{base}/console/vm1")
        await page.wait_for_url(f"{base}/signin?next=%2Fconsole%2Fvm1", timeout=TIMEOUT_MS)
        await _sign_in(page)
        await page.wait_for_url(f"{base}/console/vm1", timeout=TIMEOUT_MS)
        await _wait_text(page, "st-conn", "you are typing")
        session = {c["name"]: c for c in await context.cookies()}[COOKIE]
        assert session["secure"] and session["httpOnly"] and session["sameSite"] == "Strict"
        await context.close()
