"""Who may do what: with tokens (any non-loopback address, or `overnight serve --token`), every request names one,
in `Authorization: Bearer TOKEN`; the browser's dashboard gets it once in its URL (`/dashboard/?token=…`) and keeps
it in a same-site, HTTP-only cookie that only the dashboard's own routes accept (the API never takes a cookie, so
another site cannot make a browser steer). `read` opens every GET; `steer` also uploads and commands, and the
dashboard (its keys pause and stop runs). No tokens (loopback only): every local client may steer, as the CLI may."""
from __future__ import annotations

from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from daemon.web import serverlog
from daemon.web.dashboard import PREFIX
from daemon.web.tokens import READ, STEER, Tokens

COOKIE = "overnight_token"
READ_METHODS = ("GET", "HEAD")


def _refusal(scope: Scope, status: int, message: str):
    if scope["path"].startswith("/api/"):
        headers = {"WWW-Authenticate": 'Bearer realm="overnight"'} if status == 401 else None
        return JSONResponse({"error": message}, status, headers=headers)
    return PlainTextResponse(message + "\n", status)


class TokenAuth:
    """ASGI middleware: the scope each request needs, checked against the token it carries."""

    def __init__(self, app: ASGIApp, tokens: Tokens | None) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.tokens is None or scope["path"] == "/":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        dashboard = scope["path"].startswith(PREFIX)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if dashboard and scope["type"] == "http" and "token" in query:
            await self._to_cookie(scope, receive, send, query["token"][0])
            return
        given = self._token(headers, dashboard)
        scope_of = self.tokens.scope_of(given) if given else None
        needed = STEER if dashboard or scope.get("method", "GET") not in READ_METHODS else READ
        if scope["type"] == "websocket" and not self._same_origin(headers):
            scope_of = None  # a page of another site opening our socket with the browser's cookie
        if scope_of is None:
            message = ("this request needs a token" if not given else "the token is not valid") + \
                      ". Fix: send 'Authorization: Bearer TOKEN' (overnight serve --token printed the tokens; " \
                      "they are in the home's serve-tokens.json)"
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
        if dashboard:
            morsel = SimpleCookie(headers.get("cookie", "")).get(COOKIE)
            return morsel.value if morsel else None
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
