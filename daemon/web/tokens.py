"""The server's tokens: two scopes, `read` (every GET) and `steer` (read, plus uploads and commands), kept in the home
with mode 0600 and compared in constant time."""
from __future__ import annotations

import hmac
import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from daemon.core.errors import ServeError
from daemon.core.home import Home
from daemon.web import serverlog

READ, STEER = "read", "steer"
FILE_NAME = "serve-tokens.json"
MIN_LENGTH = 16


def path(h: Home) -> Path:
    return h.root / FILE_NAME


@dataclass(frozen=True)
class Tokens:
    read: str
    steer: str

    def scope_of(self, given: str) -> str | None:
        """The scope `given` grants (None: no token of ours). Both comparisons always run, each in constant time."""
        raw = given.encode("utf-8", "surrogateescape")
        steer = hmac.compare_digest(raw, self.steer.encode())
        read = hmac.compare_digest(raw, self.read.encode())
        return STEER if steer else READ if read else None


def load(h: Home) -> Tokens | None:
    """The home's tokens; None when `overnight serve --token` never created them. Refused (ServeError, with the fix):
    a file others may read, and tokens that are not two different long strings."""
    p = path(h)
    fix = f"Fix: move {p} aside and run overnight serve --token to create new tokens."
    try:
        mode = p.stat().st_mode
        data = json.loads(p.read_text(encoding="utf-8"))
        read, steer = data[READ], data[STEER]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ServeError(f"{p}: not a token file overnight wrote ({e}). {fix}") from None
    if mode & 0o077:
        raise ServeError(f"{p}: others may read it (mode {mode & 0o777:03o}): anyone on this machine could steer. "
                         f"Fix: chmod 600 {p}, or move it aside and run overnight serve --token to create new tokens.")
    if not all(isinstance(t, str) and len(t) >= MIN_LENGTH for t in (read, steer)) or read == steer:
        raise ServeError(f"{p}: its tokens must be two different strings of {MIN_LENGTH} characters or more. {fix}")
    return Tokens(read=read, steer=steer)


class Live:
    """The home's tokens as they are now: a token file created (overnight serve --token) or replaced while a server
    runs applies from its next request, since once a home has tokens they are always required. One that goes away
    or goes bad leaves the last good tokens in force (never an open server)."""

    def __init__(self, h: Home, tokens: Tokens | None) -> None:
        self.h, self.tokens, self.version = h, tokens, _version(path(h))

    def get(self) -> Tokens | None:
        version = _version(path(self.h))
        if version != self.version:
            try:
                self.tokens = load(self.h) or self.tokens
            except ServeError as e:
                if self.tokens is None:
                    raise  # asked again at every request (the version stays) until the file is mended
                serverlog.log.warning(f"{e} (the tokens read before stay in force)")
            self.version = version
        return self.tokens


def _version(p: Path) -> tuple[int, ...] | None:
    """What changes when the token file is written, replaced or has its mode changed (a chmod 600 is a mend)."""
    try:
        st = p.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_mode


def create(h: Home) -> tuple[Tokens, bool]:
    """The home's tokens, created (mode 0600, never readable by others, not even for a moment) when absent;
    True when they were created now (the only time they are printed)."""
    found = load(h)
    if found:
        return found, False
    tokens = Tokens(read=secrets.token_urlsafe(32), steer=secrets.token_urlsafe(32))
    p = path(h)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(asdict(tokens), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
    return tokens, True
