"""The dashboard in a browser: the same Textual app as `overnight tui`, served through textual-serve's pieces (its
page, its JavaScript terminal, and `AppService`, which runs the app as a subprocess per browser session and relays
its screen over a websocket) under this server's routes and tokens, so nothing of the dashboard is written twice."""
from __future__ import annotations

import asyncio
import json
import shlex
import sys
from pathlib import Path

import jinja2
import textual_serve
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect
from textual_serve.app_service import AppService
from textual_serve.download_manager import DownloadManager

from daemon.core.home import Home

_PACKAGE = Path(textual_serve.__file__).parent
PREFIX = "/dashboard"


def command(h: Home) -> str:
    """The dashboard process one browser session gets: `overnight tui` on this home."""
    return f"{shlex.quote(sys.executable)} -m daemon tui --home {shlex.quote(str(h.root))}"


def _size(value: str | None, default: int) -> int:
    try:
        return max(10, min(int(value or default), 1000))
    except ValueError:
        return default


class Dashboard:
    def __init__(self, h: Home) -> None:
        self.command = command(h)
        self.downloads = DownloadManager()
        self.page = jinja2.Environment(loader=jinja2.FileSystemLoader(_PACKAGE / "templates"),
                                       autoescape=True).get_template("app_index.html")

    def routes(self) -> list:
        return [Route(f"{PREFIX}/", self.index, methods=["GET"]),
                WebSocketRoute(f"{PREFIX}/ws", self.websocket),
                Mount(f"{PREFIX}/static", StaticFiles(directory=_PACKAGE / "static"), name="dashboard-static")]

    async def index(self, request: Request) -> HTMLResponse:
        """textual-serve's page, its websocket and static URLs pointing here (same origin: the cookie goes along)."""
        base = str(request.base_url).rstrip("/")
        ws = ("wss" if base.startswith("https") else "ws") + base[base.index(":"):] + f"{PREFIX}/ws"
        html = self.page.render(font_size=_size(request.query_params.get("fontsize"), 16), app_websocket_url=ws,
                                config={"static": {"url": f"{base}{PREFIX}/static/"}},
                                application={"name": "overnight"}, ping_url="")
        return HTMLResponse(html)

    async def websocket(self, ws: WebSocket) -> None:
        """One dashboard process per browser session, for as long as the socket lives."""
        await ws.accept()
        service = AppService(self.command, write_bytes=ws.send_bytes, write_str=ws.send_text, close=ws.close,
                             download_manager=self.downloads)
        await service.start(_size(ws.query_params.get("width"), 80), _size(ws.query_params.get("height"), 24))
        try:
            while True:
                envelope = json.loads(await ws.receive_text())
                kind, data = envelope[0], envelope[1] if len(envelope) > 1 else None
                if kind == "stdin":
                    await service.send_bytes(data.encode("utf-8"))
                elif kind == "resize":
                    # capped as the first size is: a huge terminal is memory the dashboard process must fill
                    await service.set_terminal_size(_size(str(data["width"]), 80), _size(str(data["height"]), 24))
                elif kind == "ping":
                    await ws.send_text(json.dumps(["pong", data]))
                elif kind == "blur":
                    await service.blur()
                elif kind == "focus":
                    await service.focus()
        except (WebSocketDisconnect, RuntimeError, asyncio.CancelledError, ValueError, TypeError, LookupError):
            pass
        finally:
            await service.stop()
