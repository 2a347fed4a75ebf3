"""The request inspector (/inspect) in a real headless Chromium driven over the DevTools protocol:
the page loads offline from the gateway, a request appears live, opens with its answer, and a
session's context chart grows; with a token the data needs it."""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import TOKEN, gateway_config
from tests.support.poll import wait_for
from tests.upstream import TEXT, TOOL

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine "
                                "(apt-get install chromium) — the inspector page is tested in a real browser")
# Set INSPECT_SCREENSHOT=PATH to keep a screenshot of the page (for a note or a review).
SCREENSHOT = os.environ.get("INSPECT_SCREENSHOT")


class Browser:
    """One headless Chromium page, spoken to over the DevTools protocol (a websocket)."""

    def __init__(self, proc, ws, session):
        self.proc, self.ws, self.session = proc, ws, session
        self._ids = itertools.count(1)

    @classmethod
    async def start(cls, profile: Path) -> Browser:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
            f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=1500,950", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        port = None
        while port is None:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, "chromium exited before opening its DevTools port"
            if "DevTools listening on ws://" in line:
                port = int(line.split("ws://127.0.0.1:", 1)[1].split("/", 1)[0])
        asyncio.ensure_future(_drain(proc.stderr))
        session = aiohttp.ClientSession()
        async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
            pages = [t for t in await resp.json() if t["type"] == "page"]
        ws = await session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        return cls(proc, ws, session)

    async def call(self, method: str, **params) -> dict:
        msg_id = next(self._ids)
        await self.ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads((await asyncio.wait_for(self.ws.receive(), 30)).data)
            if msg.get("id") == msg_id:
                assert "error" not in msg, msg
                return msg["result"]

    async def js(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def wait(self, expression: str, timeout: float = 10):
        """Poll a JS expression until it is truthy; returns its value."""
        value = await wait_for(lambda: self.js(expression), timeout, interval=0.1)
        assert value, f"never true: {expression}"
        return value

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()
        self.proc.terminate()
        await self.proc.wait()


async def _drain(stream) -> None:
    while await stream.readline():
        pass


@pytest.fixture
async def browser(tmp_path):
    b = await Browser.start(tmp_path / "profile")
    await b.call("Page.enable")
    await b.call("Runtime.enable")
    yield b
    await b.close()


def _turn(n: int) -> dict:
    """Turn n of a conversation: each one carries the whole history, as Claude Code sends it."""
    messages = []
    for i in range(n):
        messages.append({"role": "user", "content": f"step {i}: " + "please refactor this module " * 30})
        if i < n - 1:
            messages.append({"role": "assistant", "content": "done " * 40})
    return {"model": "claude-opus-4-8", "max_tokens": 100, "messages": messages}


ROWS = "document.querySelectorAll('#requests tbody tr').length"


async def test_inspector_shows_requests_live_opens_one_and_charts_a_session(start_upstream, start_gateway,
                                                                            browser, tmp_path):
    up = await start_upstream("vllm", models=["qwen-coder"], context=3000)
    up.default = TEXT("Here is the refactored module, tidy and tested.")
    gw = await start_gateway(gateway_config({"up": {"type": "vllm", "base_url": up.url, "model": "qwen-coder",
                                                    "model_mapping": {"claude-*": "qwen-coder"}}}, token=None,
                                            log_path=""), token=None)
    await browser.call("Page.navigate", url=gw.url + "/inspect")
    await browser.wait("document.readyState === 'complete' && document.querySelector('#state') !== null")
    await browser.wait("document.querySelector('#state').textContent.startsWith('live')")
    assert await browser.js(ROWS) == 0
    # Requests made while the page is open show up without a reload.
    session = {"X-Claude-Code-Session-Id": "sess-refactor-1"}
    ids = []
    for n in (1, 2, 3, 4):
        resp = await gw.post("/v1/messages", _turn(n), **session)
        assert resp.status == 200, await resp.text()
        ids.append(resp.headers["request-id"])
    up.push(TOOL("run_tests", {"path": "tests/", "verbose": True}, lead="Running the tests."))
    resp = await gw.post("/v1/messages", {**_turn(1), "stream": True}, **session)  # after a compaction: small again
    await resp.read()
    ids.append(resp.headers["request-id"])
    resp = await gw.post("/v1/messages", {"model": "claude-opus-4-8", "messages": []})
    assert resp.status == 400
    await browser.wait(f"{ROWS} === 6")
    text = await browser.js("document.querySelector('#requests tbody').innerText")
    assert "claude-opus-4-8" in text and "→ up" in text
    assert "max_tokens: field required" in text  # the error message, not only its type
    assert "run_tests" in text and "Here is the refactored module" in text
    # Filters: errors only, then a text filter.
    await browser.js("document.querySelector('#f-status').value = 'errors';"
                     "document.querySelector('#f-status').dispatchEvent(new Event('input', {bubbles: true}))")
    assert await browser.js(ROWS) == 1
    await browser.js("document.querySelector('#f-status').value = '';"
                     "document.querySelector('#f-text').value = 'run_tests';"
                     "document.querySelector('#f-text').dispatchEvent(new Event('input', {bubbles: true}))")
    assert await browser.js(ROWS) == 1
    await browser.js("document.querySelector('#f-text').value = '';"
                     "document.querySelector('#f-text').dispatchEvent(new Event('input', {bubbles: true}))")
    # One request opened: its facts, its answer (a streamed tool call), the question.
    await browser.js(f"document.querySelector('tr[data-id=\"{ids[4]}\"]').click()")
    await browser.wait("document.querySelector('.answer-tool') !== null")
    answer = await browser.js("document.querySelector('#detail-answer').innerText")
    assert "tool_use run_tests" in answer and '"verbose": true' in answer and "Running the tests." in answer
    assert "step 0: please refactor" in await browser.js("document.querySelector('#detail-question').textContent")
    # The session timeline: five turns, context growing toward the 3000-token window, one compaction.
    await browser.js("document.querySelector('tr[data-id] a.session').click()")
    await browser.wait("document.querySelectorAll('#chart circle').length === 5")
    facts = await browser.js("document.querySelector('#session-facts').textContent")
    assert facts.startswith("5 turns") and "of 3000" in facts and "1 compaction ·" in facts and "0 errors" in facts, facts
    assert await browser.js("document.querySelectorAll('#chart line.window').length") == 1
    heights = await browser.js("[...document.querySelectorAll('#chart circle')].map(c => +c.getAttribute('cy'))")
    assert heights[0] > heights[1] > heights[2] > heights[3] < heights[4]  # higher on screen = more context
    await browser.js(f"document.querySelector('tr[data-id=\"{ids[3]}\"]').click()")
    await browser.wait("document.querySelector('.answer-text') !== null")
    shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "inspect.png"
    await browser.screenshot(shot)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_inspector_behind_a_token_asks_for_it(start_upstream, start_gateway, browser):
    up = await start_upstream()
    gw = await start_gateway(gateway_config({"up": {"type": "openai", "base_url": up.url, "model": "m"}},
                                            default="up", log_path=""))
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/inspect") as resp:  # the page itself holds no data
            assert resp.status == 200 and "no-store" in resp.headers["Cache-Control"]
            assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        async with s.get(gw.url + "/inspect/api/records") as resp:
            assert resp.status == 401 and (await resp.json())["error"]["type"] == "authentication_error"
        async with s.get(gw.url + "/inspect/api/records", headers={"x-api-key": TOKEN}) as resp:
            assert resp.status == 200
        async with s.get(gw.url + "/inspect/api/records?after=x", headers={"x-api-key": TOKEN}) as resp:
            assert resp.status == 400
    resp = await gw.post("/v1/messages", {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 200
    await browser.call("Page.navigate", url=gw.url + "/inspect")
    await browser.wait("document.querySelector('#token-box') && !document.querySelector('#token-box').hidden")
    assert await browser.js(ROWS) == 0
    await browser.js(f"document.querySelector('#token').value = {json.dumps(TOKEN)};"
                     "document.querySelector('#token-form').requestSubmit()")
    await browser.wait(f"{ROWS} === 1")
    # A record that is not among the latest: a clear 404.
    async with aiohttp.ClientSession() as s, \
            s.get(gw.url + "/inspect/api/records/req_nope", headers={"x-api-key": TOKEN}) as resp:
        assert resp.status == 404 and "claude-gateway-replay show" in (await resp.json())["error"]["message"]
