"""The browser console page in a real browser: headless Debian Chromium driven by Playwright, talking to a
real daemon (HTTP + WebSocket) whose port runs an interactive shell on a PTY.

Chromium comes from apt (``/usr/bin/chromium``), never from ``playwright install``.  The screenshot is kept
as ``artifacts/browser-console.png`` for people to look at.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

try:
    from playwright.async_api import ConsoleMessage, Dialog, Page, WebSocketRoute, async_playwright
except ImportError:  # pragma: no cover - depends on the environment
    pytest.skip("playwright is not installed (it is in the 'test' extra)", allow_module_level=True)

from serialmuxd.guest import GuestVM
from serialmuxd.web import missing_vendor_files

from .support import running_daemon

CHROMIUM = "/usr/bin/chromium"
# Debian's Chromium without a sandbox (containers), GPU, or background traffic to Google.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
PORT = "vm1"
XSS = "<img src=x onerror=alert(1)>"
TIMEOUT_MS = 10_000
IN_TERMINAL = "document.activeElement.classList.contains('xterm-helper-textarea')"

if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

CONFIG = f"""
[http]
listen = "127.0.0.1:0"

[[ports]]
name = "{PORT}"
# A plain prompt, so that the screenshot and the assertions do not depend on the user's shell set-up.
device = "exec:/usr/bin/env 'PS1=guest$ ' /bin/sh -i"
"""


@pytest_asyncio.fixture
async def base_url() -> AsyncIterator[str]:
    # Not a skip: without these the page is broken, which is what this test is for.
    missing = missing_vendor_files()
    assert not missing, f"serialmuxd/web/vendor lacks {missing}: run `pip install -e .` (needs npm)"
    async with running_daemon(CONFIG, online=[PORT]) as daemon:
        assert daemon.http_address is not None
        host, port = daemon.http_address
        yield f"http://{host}:{port}"


async def _scrollback_text(url: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/api/v1/ports/{PORT}/scrollback", params={"from": "0", "format": "text"}) as r,
    ):
        assert r.status == 200, await r.text()
        return await r.text()


# The DOM renderer (xterm's default) draws the screen as text in .xterm-rows; spaces may be U+00A0.
_SCREEN_HAS = """(needle) => {
  const rows = document.querySelector('.xterm-rows');
  return rows !== null && rows.textContent.replace(/\\u00a0/g, ' ').includes(needle);
}"""


async def _run_without_terminal(url: str, line: str, until: bytes) -> None:
    """Run LINE in the guest's shell from a plain WebSocket client (which, unlike a browser page, answers
    no terminal queries) and return once UNTIL is in the output.  Attaching read-write takes the writer
    lease: a page that holds it is disconnected (4000)."""
    ws_url = url.replace("http://", "ws://", 1) + f"/api/v1/ports/{PORT}/ws"
    seen = b""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url, params={"mode": "rw"}) as ws,
        asyncio.timeout(TIMEOUT_MS / 1000),
    ):
        sent = False
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                event = json.loads(message.data)
                if not sent and event.get("kind") in ("write_granted", "took_over"):
                    await ws.send_bytes(line.encode() + b"\n")
                    sent = True
            elif message.type is aiohttp.WSMsgType.BINARY and sent:
                seen += message.data
                if until in seen:
                    return
    raise AssertionError(f"{until!r} not in the output of {line!r}: {seen!r}")


async def _screen_text(page: Page) -> str:
    text = await page.eval_on_selector(".xterm-rows", "e => e.textContent")
    return str(text).replace("\u00a0", " ")


async def _wait_screen(page: Page, needle: str) -> None:
    await page.wait_for_function(_SCREEN_HAS, arg=needle, timeout=TIMEOUT_MS)


async def _type_line(page: Page, line: str) -> None:
    await page.keyboard.type(line)
    await page.keyboard.press("Enter")


async def _active_id(page: Page) -> str:
    return str(await page.evaluate("document.activeElement ? document.activeElement.id : ''"))


# Records every fetch() of the page as it is called (an init script, so it runs before the page's own).
# A request counted in the page cannot be hidden by the network: what was not recorded was not sent.
# ``retry`` marks the page's own reconnect attempts: a retry is a timer that runs resumeConnection, which
# asks the API about the port before it opens a new socket.
_RECORD_FETCHES = """
window.__fetches = [];
const pageFetch = window.fetch.bind(window);
window.fetch = (input, init) => {
  window.__fetches.push({
    url: String(input),
    method: (init && init.method) || "GET",
    retry: (new Error().stack || "").includes("resumeConnection"),
  });
  return pageFetch(input, init);
};
"""


async def _retries(page: Page) -> int:
    return int(await page.evaluate("window.__fetches.filter((f) => f.retry).length"))


async def _posts(page: Page, action: str) -> int:
    return int(
        await page.evaluate(
            "(path) => window.__fetches.filter((f) => f.method === 'POST' && f.url.endsWith(path)).length",
            f"/{action}",
        )
    )


async def _mark(page: Page, tag: str) -> None:
    """Type a marker command into the page's terminal and wait for the shell's answer on the screen.

    The explicit later signal for "the page sent nothing else": whatever the page sent before (an answer to
    a terminal query, a SysRq) went out on the same socket first, so it has reached the guest, the
    scrollback and the daemon's replies by the time the marker's output is drawn.  Enter first, so that
    bytes still waiting in the shell's line (an answer has no newline) end up on a line of their own."""
    await page.locator("#terminal").click()
    await page.keyboard.press("Enter")
    await _type_line(page, f"echo {tag}-$((40+2))")
    await _wait_screen(page, f"{tag}-42")


async def test_console_page_in_chromium(base_url: str) -> None:
    problems: list[str] = []
    dialogs: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"console {message.type}: {message.text}")

    async def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(
                viewport={"width": 1100, "height": 640}, permissions=["clipboard-read", "clipboard-write"]
            )
            page = await context.new_page()
            page.on("console", on_console)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("dialog", on_dialog)

            # -- the console list links to the console view
            await page.goto(f"{base_url}/")
            link = page.get_by_role("link", name=PORT, exact=True)
            await link.wait_for(timeout=TIMEOUT_MS)
            row = page.locator("#port-rows tr", has=link)
            await page.wait_for_function(
                "() => document.querySelector('#port-rows tr td')?.textContent.startsWith('online')",
                timeout=TIMEOUT_MS,
            )
            assert "exec:" in (await row.inner_text())
            await link.click()
            await page.wait_for_url(f"{base_url}/console/{PORT}")

            # -- type a command, see the guest's answer
            await page.wait_for_function(
                "() => document.getElementById('st-conn').textContent.includes('you are typing')",
                timeout=TIMEOUT_MS,
            )
            await _wait_screen(page, "guest$")
            await page.locator("#terminal").click()
            await _type_line(page, "echo hi-$((6*7))")
            await _wait_screen(page, "hi-42")

            # -- guest text that looks like HTML stays text
            await _type_line(page, f"echo '{XSS}'")
            await page.wait_for_function(
                """(needle) => {
                  const rows = [...document.querySelectorAll('.xterm-rows > div')];
                  return rows.some(r => r.textContent.replace(/\\u00a0/g, ' ').trim() === needle);
                }""",
                arg=XSS,
                timeout=TIMEOUT_MS,
            )
            assert await page.locator("img").count() == 0
            assert XSS in await _screen_text(page)

            # -- Ctrl+Shift+C copies the terminal's selection, Ctrl+Shift+V pastes into the guest
            answer = page.locator(".xterm-rows > div", has_text=re.compile(r"^hi-42\s*$"))
            box = await answer.bounding_box()
            assert box is not None
            await page.mouse.dblclick(box["x"] + 4, box["y"] + box["height"] / 2)  # selects the word
            await page.keyboard.press("Control+Shift+C")
            await _wait_status(page, "st-note", "Copied")
            assert await page.evaluate("navigator.clipboard.readText()") == "hi-42"
            await page.evaluate("navigator.clipboard.writeText('echo pasted-$((3*3))')")
            await page.keyboard.press("Control+Shift+V")
            await _wait_screen(page, "echo pasted-$((3*3))")
            await page.keyboard.press("Enter")
            await _wait_screen(page, "pasted-9")
            assert (await _screen_text(page)).count("echo pasted-") == 1  # pasted once, not twice

            # -- a paste bigger than http.ws_max_message_bytes (64 KiB) arrives whole: the page sends it
            #    in smaller frames (one frame would make the daemon close the session with 1009).  Lines
            #    of 100 bytes, as a PTY in canonical mode keeps at most 4095 bytes of one line.
            big = ("x" * 99 + "\n") * 1024
            # No echo while the paste goes through: drawing 100 KiB of echo is slow on a loaded machine and
            # is not what this step tests.
            await _type_line(page, "stty -echo; head -c $((1024*100)) | wc -c; stty echo")
            await page.evaluate("text => navigator.clipboard.writeText(text)", big)
            await page.keyboard.press("Control+Shift+V")
            await page.wait_for_function(
                """() => [...document.querySelectorAll('.xterm-rows > div')]
                  .some(r => r.textContent.trim() === '102400')""",
                timeout=6 * TIMEOUT_MS,
            )
            await _wait_status(page, "st-conn", "you are typing")  # the same session, not reconnected

            # -- read-only: keystrokes no longer reach the guest, and the status says so
            await page.locator("#btn-write").click()  # labelled "Read-only" while we write
            await page.wait_for_function(
                "() => document.getElementById('st-conn').textContent.includes('read-only')",
                timeout=TIMEOUT_MS,
            )
            assert await page.locator("#btn-write").inner_text() == "Take over"
            await page.locator("#terminal").click()
            await _type_line(page, "echo ro-$((1+1))")
            await page.wait_for_function(
                "() => document.getElementById('st-note').textContent.includes('read-only')",
                timeout=TIMEOUT_MS,
            )

            # -- take over again; whatever was typed read-only would have been echoed before this
            await page.locator("#btn-write").click()
            await page.wait_for_function(
                "() => document.getElementById('st-conn').textContent.includes('you are typing')",
                timeout=TIMEOUT_MS,
            )
            await page.locator("#terminal").click()
            await _type_line(page, "echo back-$((2+3))")
            await _wait_screen(page, "back-5")
            assert "ro-" not in await _screen_text(page)
            scrollback = await _scrollback_text(base_url)
            assert "back-5" in scrollback
            assert "ro-" not in scrollback

            # -- keyboard only: Ctrl+F6 leaves the terminal, Tab reaches every command-bar control
            await page.locator("#terminal").click()
            assert await page.evaluate(IN_TERMINAL)
            await page.keyboard.press("Control+F6")
            assert await _active_id(page) == "btn-write"
            controls = await page.eval_on_selector_all(
                "#commandbar :is(button, select, input, a[href])",
                "els => els.filter(e => e.offsetParent !== null).map(e => e.id)",
            )
            assert {"btn-write", "btn-break", "btn-sysrq", "fkey", "btn-key", "download"} <= set(controls)
            assert {"btn-reconnect", "sr-mode"} <= set(controls)
            reached = [await _active_id(page)]
            for _ in controls[1:]:
                await page.keyboard.press("Tab")
                reached.append(await _active_id(page))
            assert reached == controls
            # The last control is the screen reader switch: Space turns on xterm's accessibility tree.
            assert reached[-1] == "sr-mode"
            await page.keyboard.press("Space")
            await page.locator(".xterm-accessibility-tree").wait_for(state="attached", timeout=TIMEOUT_MS)
            await page.keyboard.press("Space")
            await page.locator(".xterm-accessibility-tree").wait_for(state="detached", timeout=TIMEOUT_MS)
            # The terminal comes right after the command bar; from there Ctrl+F6 leaves it again, and
            # Ctrl+F6 in the command bar goes back into the terminal.
            await page.keyboard.press("Tab")
            assert await page.evaluate(IN_TERMINAL)
            await page.keyboard.press("Control+F6")
            assert await _active_id(page) == "btn-write"
            await page.keyboard.press("Control+F6")
            assert await page.evaluate(IN_TERMINAL)

            # -- the SysRq dialog opens from the keyboard, is labelled, and Escape closes it
            await page.keyboard.press("Control+F6")
            await page.keyboard.press("Tab")
            await page.keyboard.press("Tab")
            assert await _active_id(page) == "btn-sysrq"
            await page.keyboard.press("Enter")
            assert await _active_id(page) == "sysrq-key"
            assert await page.get_by_label("SysRq key").is_visible()
            await page.keyboard.type("h")
            await page.keyboard.press("Escape")
            assert not await page.locator("#sysrq-dialog").is_visible()
            await page.wait_for_function(
                "() => document.activeElement?.id === 'btn-sysrq'", timeout=TIMEOUT_MS
            )  # focus goes back to the button that opened the dialog
            # Escape sent nothing: a SysRq would have been answered ("BREAK not sent", the port is a PTY)
            # before the marker's output, on the same socket.
            await _mark(page, "after-escape")
            assert "BREAK not sent" not in await _screen_text(page)
            note = await page.locator("#st-note").inner_text()
            assert "SysRq" not in note and "BREAK" not in note, note

            # -- Enter in the key field sends the SysRq (not the form's first button, Cancel).  The port
            #    is a PTY, which cannot send a BREAK: the daemon answers so, and the page shows it.
            await page.locator("#btn-sysrq").focus()
            await page.keyboard.press("Enter")
            await page.keyboard.type("h")
            await page.keyboard.press("Enter")
            assert not await page.locator("#sysrq-dialog").is_visible()
            await _wait_status(page, "st-note", "BREAK not sent")

            # -- screenshot, after a last visible command
            await page.locator("#terminal").click()
            await _type_line(page, "uname -s")
            await _wait_screen(page, "Linux")
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "browser-console.png"))

            assert dialogs == []
            assert problems == []
            status = await page.locator("#status").inner_text()
            assert re.search(r"Port online", status), status
        finally:
            await browser.close()


async def _wait_status(page: Page, element_id: str, needle: str) -> None:
    await page.wait_for_function(
        "([id, needle]) => document.getElementById(id).textContent.includes(needle)",
        arg=[element_id, needle],
        timeout=TIMEOUT_MS,
    )


async def test_takeover_resume_and_disable_in_chromium(base_url: str) -> None:
    """Another browser takes over: the first page says why and does not reconnect by itself; taking over
    again resumes from its last offset, so output produced meanwhile is not lost; disabling the port
    closes the page's session with a reason."""
    console_url = f"{base_url}/console/{PORT}"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            first = await (await browser.new_context()).new_page()
            await first.goto(console_url)
            await _wait_status(first, "st-conn", "you are typing")
            await first.locator("#terminal").click()
            await _type_line(first, "echo one-$((0+1))")
            await _wait_screen(first, "one-1")

            # Reconnect resumes at the last offset: nothing is replayed twice.
            await first.locator("#btn-reconnect").click()
            await _wait_status(first, "st-conn", "you are typing")
            assert (await _screen_text(first)).count("one-1") == 1

            second = await (await browser.new_context()).new_page()
            await second.goto(console_url)
            await _wait_status(second, "st-conn", "you are typing")
            await _wait_status(first, "st-conn", "another user took over this console")
            assert await first.locator("#btn-write").inner_text() == "Take over"
            await second.locator("#terminal").click()
            await _type_line(second, "echo two-$((1+1))")
            await _wait_screen(second, "two-2")
            assert "Reconnecting" not in await first.locator("#st-conn").inner_text()
            assert "two-2" not in await _screen_text(first)

            await first.locator("#btn-write").click()  # Take over: reconnect from the last offset
            await _wait_status(first, "st-conn", "you are typing")
            await _wait_screen(first, "two-2")  # produced while this page was disconnected
            await _wait_status(second, "st-conn", "another user took over this console")
            assert (await _screen_text(first)).count("one-1") == 1

            async with aiohttp.ClientSession() as http:
                async with http.post(f"{base_url}/api/v1/ports/{PORT}/disable") as response:
                    assert response.status == 200, await response.text()
                await _wait_status(first, "st-conn", "console access is disabled")
                async with http.post(f"{base_url}/api/v1/ports/{PORT}/enable") as response:
                    assert response.status == 200, await response.text()
        finally:
            await browser.close()


async def test_replayed_terminal_queries_are_not_answered(base_url: str) -> None:
    """Terminal queries (DSR, DA) in old output that the page gets again -- the replay on attach, the
    catch-up of a from= resume -- are parsed by xterm, which answers them; those answers must not reach
    the guest.  Live queries are still answered.  The PTY echoes what the guest receives, so an answer
    (ESC [ row ; col R, ESC [ ? 1 ; 2 c) would show up in the scrollback as ^[[24;80R."""
    answer = re.compile(r"\[\d+;\d+R|\[\?[\d;]*c")
    await _run_without_terminal(base_url, r"printf 'q1-\033[6n\033[c-q2\n'", b"q1-\x1b[6n\x1b[c-q2")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{base_url}/console/{PORT}")
            await _wait_status(page, "st-conn", "you are typing")
            await _wait_screen(page, "q1--q2")  # replayed
            await _mark(page, "mark1")
            assert not answer.search(await _scrollback_text(base_url))

            # Taken over by a client that prints the queries again; taking over resumes with from=.
            await _run_without_terminal(base_url, r"printf 'q3-\033[6n\033[c-q4\n'", b"q3-\x1b[6n\x1b[c-q4")
            await _wait_status(page, "st-conn", "another user took over this console")
            await page.locator("#btn-write").click()
            await _wait_status(page, "st-conn", "you are typing")
            await _wait_screen(page, "q3--q4")  # caught up
            await _mark(page, "mark2")  # typing works once the old output is parsed
            assert not answer.search(await _scrollback_text(base_url))

            # A live query is answered as before: the answer went out before the marker's keys did.
            await _type_line(page, r"printf 'q5-\033[6n-q6\n'")
            await _wait_screen(page, "q5--q6")
            await _mark(page, "mark3")
            assert answer.search(await _scrollback_text(base_url)), "the live query was not answered"
        finally:
            await browser.close()


_STTY_SIZE = """(tag) => {
  const rows = [...document.querySelectorAll('.xterm-rows > div')]
    .map(r => r.textContent.replace(/\\u00a0/g, ' ').trim());
  const found = rows.map(r => /^(\\w+):(\\d+ \\d+)$/.exec(r)).filter(m => m && m[1] === tag);
  return found.length ? found[found.length - 1][2] : null;
}"""


async def _guest_window_size(page: Page, tag: str) -> str:
    """The PTY's size as the guest sees it ("rows cols"), printed with a tag to tell the answers apart."""
    await page.locator("#terminal").click()
    await _type_line(page, f'echo "{tag}:$(stty size)"')
    handle = await page.wait_for_function(_STTY_SIZE, arg=tag, timeout=TIMEOUT_MS)
    return str(await handle.json_value())


async def test_writer_sets_the_window_size_in_chromium(base_url: str) -> None:
    """The daemon ignores resizes from viewers: a page that becomes the writer on its open socket (Take
    over after Read-only) sends its size again, or the guest keeps the previous writer's."""
    console_url = f"{base_url}/console/{PORT}"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            big = await browser.new_page(viewport={"width": 1100, "height": 640})
            await big.goto(console_url)
            await _wait_status(big, "st-conn", "you are typing")
            big_size = await _guest_window_size(big, "A1")

            await big.locator("#btn-write").click()  # Read-only: the socket stays, as a viewer
            await _wait_status(big, "st-conn", "read-only")
            small = await browser.new_page(viewport={"width": 700, "height": 400})
            await small.goto(console_url)
            await _wait_status(small, "st-conn", "you are typing")
            small_size = await _guest_window_size(small, "B1")
            assert small_size != big_size

            await big.locator("#btn-write").click()  # Take over on the same socket
            await _wait_status(big, "st-conn", "you are typing")
            assert await _guest_window_size(big, "A2") == big_size
        finally:
            await browser.close()


async def test_close_codes_4003_and_4002_in_chromium(base_url: str) -> None:
    """The page's WebSocket goes through Playwright, which closes it the way the daemon would.  4003 (fell
    behind): reconnect by itself, without from= (a fresh attach with replay), and say so.  4002 (bad
    message): the daemon would reject the page again, so show its reason and wait for Reconnect.

    "Does not reconnect by itself" is shown with Playwright's clock: a minute of the page's time is run at
    once, which fires every timer the page has, a retry (at most 30 s away) included."""
    urls: list[str] = []
    routes: list[WebSocketRoute] = []

    def through_playwright(route: WebSocketRoute) -> None:
        urls.append(route.url)
        routes.append(route)
        route.connect_to_server()  # forwards both ways

    async def close_as_daemon(code: int, reason: str) -> None:
        routes[-1].send(json.dumps({"type": "closing", "reason": reason, "code": code}))
        await routes[-1].close(code=code, reason=reason)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.clock.install()  # time flows as usual until the test pauses it
            await page.add_init_script(_RECORD_FETCHES)
            await page.route_web_socket(re.compile(r"/api/v1/ports/[^/]+/ws"), through_playwright)
            await page.goto(f"{base_url}/console/{PORT}")
            await _wait_status(page, "st-conn", "you are typing")
            await _wait_screen(page, "guest$")
            assert len(urls) == 1 and "from=" not in urls[0]

            await close_as_daemon(4003, "fell behind: 5 bytes were overwritten before they could be sent")
            await _wait_status(page, "st-conn", "fresh attach")
            await _wait_status(page, "st-conn", "you are typing")
            await _wait_status(page, "st-conn", "Attached afresh after falling behind")
            assert len(urls) == 2 and "from=" not in urls[1], urls
            assert await _retries(page) == 1  # the probe sees the retry it should see

            await close_as_daemon(4002, "bad message: resize needs integer cols and rows in 1..1000")
            await _wait_status(page, "st-conn", "rejected a message from this page (bad message: resize")
            await _wait_status(page, "st-conn", "Use Reconnect")
            await page.clock.pause_at(int(await page.evaluate("Date.now()")) + 1)
            await page.clock.run_for(60_000)
            assert await _retries(page) == 1, "reconnected by itself after 4002"
            await page.clock.resume()
            assert len(urls) == 2, urls

            await page.locator("#btn-reconnect").click()  # a resume at the last offset
            await _wait_status(page, "st-conn", "you are typing")
            assert len(urls) == 3 and "from=" in urls[2], urls
            assert "Attached afresh" not in await page.locator("#st-conn").inner_text()
        finally:
            await browser.close()


# Registered while the confirmation dialog is open, after the page's own close listener; a microtask after
# that, so that it also comes after the page's continuation of ``await confirmAction(...)``.
_AFTER_CONFIRM_CLOSED = """() => {
  window.__confirmClosed = false;
  document.getElementById("confirm-dialog").addEventListener("close", () => {
    queueMicrotask(() => { window.__confirmClosed = true; });
  }, { once: true });
}"""


async def test_nmi_button_on_a_real_qemu_guest(guest_vm: GuestVM) -> None:
    """NMI / Reset / Restart appear for a port with a hypervisor and ask before acting; confirming the NMI
    makes the real guest kernel print its NMI line in the page's terminal."""
    await guest_vm.start(paused=True)
    config = f"""
[http]
listen = "127.0.0.1:0"

[[ports]]
name = "{PORT}"
device = "unix:{guest_vm.serial_socket}"

[ports.hypervisor]
type = "qmp"
socket = "{guest_vm.qmp_socket}"
"""
    async with running_daemon(config, online=[PORT]) as daemon:
        assert daemon.http_address is not None
        base_url = "http://{}:{}".format(*daemon.http_address)
        await guest_vm.cont()
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1100, "height": 640})
                await page.add_init_script(_RECORD_FETCHES)
                await page.goto(f"{base_url}/console/{PORT}")
                await _wait_status(page, "st-conn", "you are typing")
                await page.wait_for_function(_SCREEN_HAS, arg="sertest login:", timeout=60_000)
                nmi = page.get_by_role("button", name="NMI…")
                await nmi.wait_for(timeout=TIMEOUT_MS)
                assert await page.get_by_role("button", name="Reset…").is_visible()
                assert await page.get_by_role("button", name="Restart…").is_visible()

                # Keyboard: the buttons are in the Tab order of the command bar, right after "Send key".
                await page.locator("#btn-key").focus()
                await page.keyboard.press("Tab")
                assert await _active_id(page) == "btn-nmi"
                await page.keyboard.press("Enter")
                dialog = page.get_by_role("dialog")
                await dialog.wait_for(timeout=TIMEOUT_MS)
                assert "non-maskable interrupt" in await dialog.inner_text()
                assert (
                    await page.evaluate("document.activeElement.textContent") == "Cancel"
                )  # the safe default
                # Our own listener on the dialog's close event runs after the page's, which resolves its
                # confirmation: once ours has run, the page has acted on Cancel, and any request it made is
                # recorded (the explicit later signal for "Cancel sent nothing").
                await page.evaluate(_AFTER_CONFIRM_CLOSED)
                await page.keyboard.press("Enter")  # Cancel
                await dialog.wait_for(state="hidden", timeout=TIMEOUT_MS)
                await page.wait_for_function("() => window.__confirmClosed === true", timeout=TIMEOUT_MS)
                assert await _posts(page, "nmi") == 0

                await nmi.click()
                await page.get_by_role("button", name="Send NMI").click()
                await page.wait_for_function(
                    _SCREEN_HAS, arg="NMI received for unknown reason", timeout=20_000
                )
                await _wait_status(page, "st-note", "NMI sent")
                assert await _posts(page, "nmi") == 1
                await page.screenshot(path=str(ARTIFACTS / "browser-nmi.png"))
            finally:
                await browser.close()


async def test_a_hinted_notice_names_the_pages_button_in_chromium() -> None:
    """The daemon's notice says what happened and carries a hint; the page words the hint for its own
    users (its Take over button), never the telnet escape keys."""
    idle_config = CONFIG + "writer_idle_timeout_s = 1\n"
    async with running_daemon(idle_config, online=[PORT]) as daemon, async_playwright() as pw:
        assert daemon.http_address is not None
        host, port = daemon.http_address
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 640})
            await page.goto(f"http://{host}:{port}/console/{PORT}")  # the writer, demoted after 1 s
            await _wait_screen(page, "you are now read-only (Take over lets you type)")
            await _wait_status(page, "st-conn", "read-only")
            assert "Ctrl-E" not in await _screen_text(page)
            await page.locator("#btn-write").click()  # what the hint says
            await _wait_status(page, "st-conn", "you are typing")
        finally:
            await browser.close()
