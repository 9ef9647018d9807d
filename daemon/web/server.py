"""`overnight serve`: where to listen (the [serve] table of overnight.toml, then the command line; read at start),
whether tokens are required, and uvicorn running the app until SIGINT/SIGTERM."""
from __future__ import annotations

import signal
import socket
import sys
from dataclasses import dataclass
from typing import Callable

from daemon.core.errors import ServeError
from daemon.core.home import Home
from daemon.core.options import OptionsError, read_toml, validate_table
from daemon.web import serverlog, tokens as tokenfile
from daemon.web.auth import is_loopback

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8642
GRACE_S = 3  # seconds open requests (a log stream of a running job) get to end when the server stops


@dataclass(frozen=True)
class Settings:
    host: str
    port: int


def settings(h: Home, host: str | None, port: int | None,
             warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> Settings:
    """The command line over overnight.toml's [serve] table over the defaults."""
    table = _serve_table(h, warn)
    return Settings(host or table.get("host", DEFAULT_HOST),
                    port if port is not None else table.get("port", DEFAULT_PORT))


def _serve_table(h: Home, warn: Callable[[str], None]) -> dict:
    """[serve] alone: a mistake elsewhere in overnight.toml is the daemon's to report (GET /api/status shows it), and
    the server is how a remote owner sees it, so it must not keep the server down. A file that is not TOML at all:
    the defaults, said once; a bad [serve] itself: refused (the server would listen somewhere unmeant)."""
    if not h.toml.exists():
        return {}
    try:
        owner = read_toml(h.toml)
    except OptionsError as e:
        warn(f"warning: {e} (until it is fixed, overnight serve listens where --host/--port or the defaults say)")
        return {}
    if "serve" not in owner:
        return {}
    try:
        return validate_table(h.toml, {"serve": owner["serve"]}, sidecar=False)["serve"]
    except OptionsError as e:
        raise ServeError(str(e)) from None


def refuse_open(h: Home, s: Settings, new_token: bool) -> None:
    """A non-loopback address without tokens (none in the home, no --token to create them) is refused; so is a token
    file that is not one."""
    if tokenfile.load(h) is None and not new_token and not is_loopback(s.host):
        raise ServeError(f"refusing to serve on {s.host}, which is not a loopback address, without a token: anyone who "
                         f"reaches it could upload and steer. Fix: overnight serve --token --host {s.host} "
                         f"(creates the tokens), or serve on 127.0.0.1 and reach it through ssh -L.")


def prepare(h: Home, s: Settings, new_token: bool, say: Callable[[str], None]) -> tokenfile.Tokens | None:
    """The tokens this server requires (created by --token; printed once, when created); `refuse_open` first."""
    if not new_token:
        return tokenfile.load(h)
    tokens, created = tokenfile.create(h)
    if created:
        say(f"created the tokens (shown once; kept in {tokenfile.path(h)}, mode 0600):\n"
            f"  steer (read, upload, steer, dashboard): {tokens.steer}\n  read (GET only): {tokens.read}")
    return tokens


def listen(s: Settings) -> socket.socket:
    """The server's socket, bound before anything else happens: a port in use is refused here, before the server says
    it serves or touches the home (another server may be receiving uploads into it)."""
    sock = socket.socket(socket.AF_INET6 if ":" in s.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart binds at once after a stop
    try:
        sock.bind((s.host, s.port))
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {s.host}:{s.port}: {e.strerror or e}. Fix: stop what holds the port "
                         f"(another overnight serve?), or serve on another: overnight serve --port N") from None
    return sock


def run(h: Home, s: Settings, tokens: tokenfile.Tokens | None, say: Callable[[str], None],
        sock: socket.socket) -> None:
    """Serve on `sock` (`listen`'s) until SIGINT/SIGTERM; open log streams get GRACE_S to end, then the server exits
    (code 0)."""
    import uvicorn

    from daemon.web.app import build
    serverlog.setup(h, echo=False)
    server: uvicorn.Server | None = None  # made below, once the app it serves exists
    # a stop ends the app's open log streams itself: uvicorn would cancel them after GRACE_S, with a traceback
    app = build(h, tokens, stopping=lambda: server is not None and server.should_exit)
    url = f"http://{s.host if ':' not in s.host else f'[{s.host}]'}:{s.port}"
    serverlog.log.info(f"serving {h.root} on {url} ({'tokens required' if tokens else 'no token: loopback only'})")
    say(f"serving {h.root} on {url}\n  API: {url}/api/ (schema: {url}/api/openapi.json)\n  dashboard: {url}/dashboard/"
        + ("?token=STEER_TOKEN" if tokens else "") + f"\n  log: {h.root / 'serve.log'}")
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False,
                            timeout_graceful_shutdown=GRACE_S)
    # uvicorn raises the signal that stopped it again once it is done: ours ends the process as a clean stop
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        serverlog.log.info("stopped")
