"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol, for pages a person
views: open a file, collect console errors and every request that is not the page itself or a
``data:`` URI, read facts from the DOM, take a screenshot. aiohttp (a dependency of ray[default])
speaks the protocol's WebSocket; nothing else is needed."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Visit:
    facts: object  # what the page's expression returned
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # outside the page itself and data: URIs
    screenshot: bytes = b""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _visit(port: int, url: str, expression: str, width: int, height: int) -> Visit:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        for _ in range(200):  # the browser takes a moment to listen
            try:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    targets = [t for t in await r.json() if t["type"] == "page"]
                if targets:
                    break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        async with http.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            visit, pending, ids = Visit(None), {}, iter(range(1, 10**6))

            async def call(method: str, **params):
                i = next(ids)
                pending[i] = asyncio.get_running_loop().create_future()
                await ws.send_str(json.dumps({"id": i, "method": method, "params": params}))
                return await asyncio.wait_for(pending[i], 30)

            loaded = asyncio.Event()

            async def listen():
                async for msg in ws:
                    m = json.loads(msg.data)
                    if "id" in m and m["id"] in pending:
                        pending.pop(m["id"]).set_result(m.get("result", m.get("error")))
                    method, p = m.get("method"), m.get("params", {})
                    if method == "Page.loadEventFired":
                        loaded.set()
                    elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                        visit.console_errors.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
                    elif method == "Runtime.exceptionThrown":
                        visit.console_errors.append(p["exceptionDetails"].get("text", "exception"))
                    elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                        visit.console_errors.append(p["entry"]["text"])
                    elif method == "Network.requestWillBeSent":
                        u = p["request"]["url"]
                        if u != url and not u.startswith("data:"):
                            visit.requests.append(u)

            listener = asyncio.create_task(listen())
            for domain in ("Page", "Runtime", "Log", "Network"):
                await call(f"{domain}.enable")
            await call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                       mobile=False)
            await call("Page.navigate", url=url)
            await asyncio.wait_for(loaded.wait(), 30)
            await asyncio.sleep(0.3)  # late console messages
            result = await call("Runtime.evaluate", expression=expression, returnByValue=True)
            visit.facts = result["result"].get("value")
            shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            visit.screenshot = base64.b64decode(shot["data"])
            listener.cancel()
            return visit


def visit(url: str, expression: str = "null", width: int = 1200, height: int = 900) -> Visit:
    """Open ``url`` in a fresh headless Chromium; ``expression`` (JavaScript, run by the test through
    the DevTools protocol, not by the page) is evaluated once the page has loaded."""
    port = _port()
    profile = tempfile.mkdtemp(prefix="raeae-chromium-")
    proc = subprocess.Popen([chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-extensions", "--disable-background-networking", "--disable-sync",
                             "--disable-component-update", "--disable-default-apps", "--mute-audio",
                             f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
                             f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return asyncio.run(_visit(port, url, expression, width, height))
    finally:
        proc.kill()
        proc.wait(timeout=30)
        time.sleep(0.1)
        shutil.rmtree(profile, ignore_errors=True)
