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

READ, STEER = "read", "steer"
FILE_NAME = "serve-tokens.json"


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
    """The home's tokens; None when `overnight serve --token` never created them."""
    p = path(h)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        return Tokens(read=str(data[READ]), steer=str(data[STEER]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ServeError(f"{p}: not a token file overnight wrote ({e}). Fix: move it aside and run "
                         f"overnight serve --token to create new tokens.") from None


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
