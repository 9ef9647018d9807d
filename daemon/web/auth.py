"""Who may do what: with tokens (any non-loopback address, or `overnight serve --token`), every request names one,
in `Authorization: Bearer TOKEN`; the browser's dashboard gets it once in its URL (`/dashboard/?token=…`) and keeps
it in a same-site, HTTP-only cookie that only the dashboard's own routes accept (the API never takes a cookie, so
another site cannot make a browser steer). `read` opens every GET; `steer` also uploads and commands, and the
dashboard (its keys pause and stop runs). No tokens (loopback only): every local client may steer, as the CLI may,
but only requests for 127.0.0.1/localhost are answered (DNS rebinding). Any write or socket from a page of another
site (its Origin) is refused: a browser lets any page send a form or open a socket to 127.0.0.1."""
from __future__ import annotations

import ipaddress
from urllib.parse import parse_qs, urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import cookie_parser
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from daemon.web import serverlog
from daemon.web.dashboard import PREFIX
from daemon.core.errors import ServeError
from daemon.web.tokens import READ, STEER, Live, Tokens

COOKIE = "overnight_token"
DASHBOARD_FIX = "Fix: open /dashboard/?token=STEER_TOKEN once (the steer token overnight serve --token printed; it is " \
                "in the home's serve-tokens.json)"


def is_loopback(host: str) -> bool:
    """127.0.0.1, ::1 (and the rest of 127/8) or localhost; a name that merely resolves there is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
READ_METHODS = ("GET", "HEAD")


def _refusal(scope: Scope, status: int, message: str):
    if scope["path"].startswith("/api/"):
        headers = {"WWW-Authenticate": 'Bearer realm="overnight"'} if status == 401 else None
        return JSONResponse({"error": message}, status, headers=headers)
    return PlainTextResponse(message + "\n", status)


class NoFraming:
    """ASGI middleware: no page of another site may show ours in a frame (clickjacking: without tokens the dashboard
    steers for whoever's click lands on it)."""

    HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def framed_never(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, framed_never)


class TokenAuth:
    """ASGI middleware: the scope each request needs, checked against the token it carries."""

    def __init__(self, app: ASGIApp, tokens: Live) -> None:
        self.app = app
        self.live = tokens
        self.tokens: Tokens | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            self.tokens = self.live.get()
        except ServeError as e:  # a token file that is not one appeared: nothing is answered until it is mended
            await self._refuse(scope, receive, send, 503, str(e))
            return
        headers = Headers(scope=scope)
        if self.tokens is None and not is_loopback(urlsplit(f"//{headers.get('host', '')}").hostname or ""):
            # a name that resolves to 127.0.0.1 only for the attacker's page (DNS rebinding)
            await self._refuse(scope, receive, send, 403, f"without tokens this server answers only requests for "
                                                          f"127.0.0.1 or localhost, not {headers.get('host')!r}. "
                                                          f"Fix: open http://127.0.0.1:PORT/")
            return
        writes = scope["type"] == "websocket" or scope.get("method", "GET") not in READ_METHODS
        if writes and not self._same_origin(headers):  # a form or a socket opened by a page of another site
            await self._refuse(scope, receive, send, 403, f"a page of {headers.get('origin')} may not write here. "
                                                          f"Fix: use the API from a script (curl, httpx), not a "
                                                          f"page of another site")
            return
        if self.tokens is None or scope["path"] == "/":
            await self.app(scope, receive, send)
            return
        dashboard = scope["path"].startswith(PREFIX)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if dashboard and scope["type"] == "http" and "token" in query:
            await self._to_cookie(scope, receive, send, query["token"][0])
            return
        given = self._token(headers, dashboard)
        scope_of = self.tokens.scope_of(given) if given else None
        needed = STEER if dashboard or scope.get("method", "GET") not in READ_METHODS else READ
        if scope_of is None:
            message = ("this request needs a token" if not given else "the token is not valid") + ". " + (
                DASHBOARD_FIX if dashboard else "Fix: send 'Authorization: Bearer TOKEN' (overnight serve --token "
                                                "printed the tokens; they are in the home's serve-tokens.json)")
            await self._refuse(scope, receive, send, 401, message)
            return
        if needed == STEER and scope_of != STEER:
            await self._refuse(scope, receive, send, 403, "this token may only read. Fix: use the steer token "
                                                          "(serve-tokens.json in the home) to upload or steer")
            return
        scope.setdefault("state", {})["scope"] = scope_of
        await self.app(scope, receive, send)

    @staticmethod
    def _token(headers: Headers, dashboard: bool) -> str | None:
        kind, _, value = headers.get("authorization", "").partition(" ")
        if kind.lower() == "bearer" and value.strip():
            return value.strip()
        if dashboard:  # Starlette's parser: another site's malformed cookie must not hide ours (SimpleCookie drops all)
            return cookie_parser(headers.get("cookie", "")).get(COOKIE) or None
        return None

    @staticmethod
    def _same_origin(headers: Headers) -> bool:
        origin = headers.get("origin")
        return origin is None or urlsplit(origin).netloc == headers.get("host")

    async def _to_cookie(self, scope: Scope, receive: Receive, send: Send, token: str) -> None:
        """`/dashboard/?token=T`: a token of the steer scope becomes the cookie, and the URL loses it."""
        if self.tokens.scope_of(token) != STEER:
            await self._refuse(scope, receive, send, 401 if self.tokens.scope_of(token) is None else 403,
                               "the dashboard needs the steer token. Fix: open /dashboard/?token=STEER_TOKEN")
            return
        response = RedirectResponse(f"{PREFIX}/", 303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path=PREFIX)
        await response(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
        if scope.get("method", "GET") not in READ_METHODS:
            client = scope.get("client") or ("unknown client", "")
            serverlog.write(f"{client[0]}:{client[1]}", f"{scope['method']} {scope['path']} refused ({status}): "
                                                        f"{message.split('. Fix')[0]}")
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        await _refusal(scope, status, message)(scope, receive, send)
