"""The dashboard in a real browser: headless Chromium (Debian's package) opens `overnight serve`'s /dashboard/ with
the steer token, textual-serve starts the dashboard for it, and the runs table shows the run's id. Checked through
what the browser received on the dashboard's websocket (Chrome's DevTools protocol: Network.webSocketFrameReceived),
and kept as a screenshot (dashboard.png in the test's folder; OVERNIGHT_SCREENSHOT names another path)."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import budget, drop, overnight, unavailable, wait_until
from tests.test_serve import serve_proc  # noqa: F401 - the fixture

pytestmark = pytest.mark.e2e
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[()][A-Z0-9]")


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        unavailable("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    return found


class Browser:
    """Headless Chromium with its DevTools endpoint, in a profile folder of its own."""

    def __init__(self, binary: str, profile: Path) -> None:
        self.profile = profile
        self.proc = subprocess.Popen([binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                      "--remote-debugging-port=0", f"--user-data-dir={profile}",
                                      "--window-size=1400,900", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        wait_until(port_file.exists, budget(60), 0.1, "Chromium's DevTools port")
        self.port = int(port_file.read_text().split()[0])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def _screen(devtools_port: int, url: str, wanted: str, timeout: float) -> tuple[bytes, bytes]:
    """Open `url` in a tab; (what the page's websocket received, ANSI codes removed; a PNG screenshot) once `wanted`
    shows in it."""
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + timeout
        while True:  # the first tab appears a moment after the port
            async with http.get(f"http://127.0.0.1:{devtools_port}/json/list") as r:
                pages = [t for t in await r.json() if t["type"] == "page"]
            if pages or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as cdp:
            ids = iter(range(1, 10**6))
            received = bytearray()
            replies: dict[int, dict] = {}

            async def call(method: str, **params) -> dict:
                n = next(ids)
                await cdp.send_json({"id": n, "method": method, "params": params})
                while n not in replies:
                    await pump(1.0)
                return replies.pop(n)

            async def pump(wait: float) -> None:
                try:
                    msg = json.loads((await cdp.receive(timeout=wait)).data)
                except asyncio.TimeoutError:
                    return
                if "id" in msg:
                    replies[msg["id"]] = msg
                elif msg.get("method") == "Network.webSocketFrameReceived":
                    frame = msg["params"]["response"]
                    data = frame["payloadData"]
                    received.extend(base64.b64decode(data) if frame["opcode"] == 2 else data.encode())

            await call("Network.enable")
            await call("Page.enable")
            await call("Page.navigate", url=url)
            while wanted.encode() not in ANSI.sub(b"", bytes(received)) and time.monotonic() < deadline:
                await pump(0.5)
            await asyncio.sleep(2)  # the browser paints what it received
            shot = await call("Page.captureScreenshot", format="png")
            return ANSI.sub(b"", bytes(received)), base64.b64decode(shot["result"]["data"])


def test_the_dashboard_opens_in_chromium_and_shows_the_run(home, tiny_model, daemon_proc, serve_proc,  # noqa: F811
                                                           tmp_path):
    binary = _chromium()
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (home / "control" / "stop").write_text("")  # the queue held: the run stays queued, nothing trains
    src = tmp_path / "browsed.jsonl"
    src.write_text('{"text": "hello there"}\n' * 10)
    daemon = daemon_proc()
    drop(src, home / "inbox")
    run_id = wait_until(lambda: [r["id"] for r in json.loads(overnight("runs", "--json", home=home).stdout or "[]")],
                        budget(60), 0.3, "the run to be queued")[0]
    daemon.stop()
    server = serve_proc("--token", token="(any)")
    steer = json.loads((home / "serve-tokens.json").read_text())["steer"]
    browser = Browser(binary, tmp_path / "profile")
    try:
        seen, png = asyncio.run(_screen(browser.port, f"{server.url}/dashboard/?token={steer}", run_id,
                                        budget(90)))
    finally:
        browser.close()
    shot = Path(os.environ.get("OVERNIGHT_SCREENSHOT") or tmp_path / "dashboard.png")
    shot.write_bytes(png)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert run_id.encode() in seen, f"the dashboard never showed {run_id}; screenshot: {shot}"
    assert b"queued" in seen
