"""The errors a user can fix, shared across modules (kept here so that the modules raising them and the ones
reporting them import no one else's code for them: no cycle)."""
from __future__ import annotations


class OptionsError(ValueError):
    """A bad option file or value; the message names the file, the key and the fix (a file with several bad
    keys: one line each, also in `each`)."""

    each: list[str] = []


class SubmissionError(Exception):
    """Why a drop is rejected: one complete, user-facing message."""
