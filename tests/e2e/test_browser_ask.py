"""Takeover policy ``ask`` on the console page, in real headless Chromium: the writer's page shows the
question with two buttons, and its answer decides (the other side is a plain WebSocket client)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from .support import running_daemon
from .test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS

try:
    from playwright.async_api import async_playwright
except ImportError:  # pragma: no cover - depends on the environment
    pytest.skip("playwright is not installed (it is in the 'test' extra)", allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

CONFIG = """
[http]
listen = "127.0.0.1:0"

[[ports]]
name = "vm1"
device = "exec:/bin/cat"
takeover = "ask"
ask_timeout_s = 60
"""


@pytest_asyncio.fixture
async def base_url() -> AsyncIterator[str]:
    async with running_daemon(CONFIG, online=["vm1"]) as daemon:
        assert daemon.http_address is not None
        host, port = daemon.http_address
        yield f"http://{host}:{port}"


async def _next_kind(ws: aiohttp.ClientWebSocketResponse, kinds: set[str]) -> dict[str, Any]:
    async for message in ws:
        if message.type is aiohttp.WSMsgType.TEXT:
            event: dict[str, Any] = json.loads(message.data)
            if event.get("kind") in kinds:
                return event
    raise AssertionError(f"socket closed before any of {kinds}")


async def test_page_answers_a_takeover_request(base_url: str) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{base_url}/console/vm1")
            await page.wait_for_function(
                "() => document.getElementById('st-conn').textContent.includes('you are typing')",
                timeout=TIMEOUT_MS,
            )
            bar = page.locator("#ask-bar")
            assert await bar.is_hidden()
            ws_url = base_url.replace("http://", "ws://") + "/api/v1/ports/vm1/ws?mode=rw"
            async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
                assert (await _next_kind(ws, {"waiting"}))["timeout_s"] == 60
                await bar.wait_for(state="visible", timeout=TIMEOUT_MS)
                assert "asks for write access to vm1" in await page.locator("#ask-text").inner_text()
                await page.get_by_role("button", name="Keep writing").click()
                refused = await _next_kind(ws, {"refused", "took_over"})
                assert refused["kind"] == "refused" and "keeps write access" in refused["text"]
                assert await bar.is_hidden()

                await ws.send_json({"type": "take_over"})
                await _next_kind(ws, {"waiting"})
                await bar.wait_for(state="visible", timeout=TIMEOUT_MS)
                await page.get_by_role("button", name="Hand over").click()
                assert (await _next_kind(ws, {"took_over", "refused"}))["kind"] == "took_over"
                await page.wait_for_function(
                    "() => document.getElementById('st-conn').textContent.includes('read-only')",
                    timeout=TIMEOUT_MS,
                )
                assert await bar.is_hidden()
        finally:
            await browser.close()
