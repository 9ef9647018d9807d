"""The dashboard in a browser: the same Textual app as `overnight tui`, served through textual-serve's pieces (its
page, its JavaScript terminal, and `AppService`, which runs the app as a subprocess per browser session and relays
its screen over a websocket) under this server's routes and tokens, so nothing of the dashboard is written twice."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
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
from daemon.web import serverlog

_PACKAGE = Path(textual_serve.__file__).parent
PREFIX = "/dashboard"
# textual-serve's page loads its font from Google: an outside request from a box that is often offline (the page
# falls back to the local monospace fonts it names next)
_OUTSIDE_FONT = re.compile(r"<link[^>]*fonts\.googleapis\.com[^>]*>\s*")


def command(h: Home) -> str:
    """The dashboard process one browser session gets: `overnight tui` on this home, in place of the shell (exec), so
    that this server is its parent, and guarded (daemon/web/childguard.py) so that it ends when this server dies."""
    python = shlex.quote(sys.executable)
    return (f"exec {python} -m daemon.web.childguard {os.getpid()} {python} -m daemon tui "
            f"--home {shlex.quote(str(h.root))}")


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
        return HTMLResponse(_OUTSIDE_FONT.sub("", html))

    async def websocket(self, ws: WebSocket) -> None:
        """One dashboard process per browser session, for as long as the socket lives; its opening, its end and a
        message that is not the page's are serve.log lines, never a traceback."""
        client = f"{ws.client.host}:{ws.client.port}" if ws.client else "unknown client"
        await ws.accept()
        service = AppService(self.command, write_bytes=ws.send_bytes, write_str=ws.send_text, close=ws.close,
                             download_manager=self.downloads)
        await service.start(_size(ws.query_params.get("width"), 80), _size(ws.query_params.get("height"), 24))
        serverlog.write(client, "dashboard: opened")
        how = "closed"
        try:
            await self._relay(ws, service)
        except (WebSocketDisconnect, RuntimeError, asyncio.CancelledError):
            pass  # the tab closed, or the server stops
        except (ValueError, TypeError, LookupError, AttributeError) as e:  # not what textual-serve's page sends
            how = f"ended: a message it cannot read ({type(e).__name__}: {str(e)[:80]})"
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await ws.close(1003)
        finally:
            # the process's last words (its exit) go to a socket that may be gone: nothing is left to tell
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await service.stop()
            serverlog.write(client, f"dashboard: {how}")

    @staticmethod
    async def _relay(ws: WebSocket, service: AppService) -> None:
        """textual-serve's page's messages, `[kind, data]`, to the dashboard process."""
        while True:
            envelope = json.loads(await ws.receive_text())
            kind, data = envelope[0], envelope[1] if len(envelope) > 1 else None
            if kind == "stdin":
                await service.send_bytes(_text(data).encode("utf-8"))
            elif kind == "resize":
                # capped as the first size is: a huge terminal is memory the dashboard process must fill
                await service.set_terminal_size(_size(str(data["width"]), 80), _size(str(data["height"]), 24))
            elif kind == "ping":
                await ws.send_text(json.dumps(["pong", data]))
            elif kind == "blur":
                await service.blur()
            elif kind == "focus":
                await service.focus()


def _text(data: object) -> str:
    if not isinstance(data, str):
        raise TypeError(f"stdin carries text, not {type(data).__name__}")
    return data
