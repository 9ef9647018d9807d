"""Every error a user can fix, in one place: each message names the file or thing, what is wrong and the fix. The
modules that raise them and the ones that report them (the CLI, the dashboard, intake's rejections) import them from
here, so neither needs the other's code for it: no cycle. The core, the daemon, the trainer and the client share it."""
from __future__ import annotations

import sqlite3
from pathlib import Path


class OptionsError(ValueError):
    """A bad option file or value; the message names the file, the key and the fix (a file with several bad
    keys: one line each, also in `each`)."""

    each: list[str] = []


class SubmissionError(Exception):
    """Why a drop is rejected: one complete, user-facing message."""


class DatasetError(Exception):
    """One precise problem in a dataset: where it is, what is wrong and how to fix it.

    `str(err)` is the complete user-facing message, e.g.
    "data.jsonl, line 12, field 'messages[2].role': unknown role 'bot' (...).\\nFix: ...".
    """

    def __init__(self, file: str, location: str | None, field: str | None, problem: str, fix: str) -> None:
        super().__init__(file, location, field, problem, fix)  # args make the error picklable
        self.file = file
        self.location = location
        self.field = field
        self.problem = problem
        self.fix = fix

    @property
    def place(self) -> str:
        """`data.jsonl, line 12, field 'messages[2].role'`: as much of it as is known."""
        where = [self.file, self.location, f"field '{self.field}'" if self.field else None]
        return ", ".join(w for w in where if w)

    def __str__(self) -> str:
        problem = self.problem if self.problem.endswith((".", "?", "!")) else self.problem + "."
        fix = self.fix if self.fix.endswith((".", "?", "!", "`")) else self.fix + "."
        return f"{self.place}: {problem}\nFix: {fix}"


class NoAssistantTurn(DatasetError):
    """A conversation without an assistant turn (probe files say it their own way)."""


class TemplateError(Exception):
    """A chat template that cannot be used, or a conversation it refuses: the message says the fix."""


class ModelNotFound(Exception):
    """No model where `base_model` points: `problem` says what was tried, `fix` what to do."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}. Fix: {fix}.")
        self.problem, self.fix = problem, fix


class HomeLocked(RuntimeError):
    """Another daemon holds this home."""


class HomeDamaged(RuntimeError):
    """A folder of the home is a file (or cannot be made): the message names it and the fix."""


class NewerDB(RuntimeError):
    """overnight.db was written by a newer overnight: the message says the fix."""


class BrokenDB(sqlite3.DatabaseError):
    """overnight.db is not a database any more: a sqlite3 error (the dashboard shows it as one) whose text says the
    fix (the CLI prints it as one line and exits 1, not a traceback)."""

    def __init__(self, path: Path, error: Exception) -> None:
        super().__init__(f"{path} cannot be read ({error}). Fix: overnight doctor --rebuild "
                         f"(or restart the daemon: it rebuilds the DB from runs/ by itself)")


class RefError(LookupError):
    """A run or group named on the command line that matches none, or several: the text lists them and the fix."""


class ControlError(ValueError):
    """An unreadable or unknown control file; the message says what to write instead."""


class ConfigError(ValueError):
    """config.json is not a JSON object: the message names the file and says what is wrong with it."""


class GpuChoiceError(ValueError):
    """`gpus` / `gpus_per_run` name GPUs the daemon cannot see: the message names both and the fix."""


class RunError(Exception):
    """A failure with a message for the user: it ends the run as failed with this reason (no traceback)."""


class ExportError(Exception):
    """What went wrong, in one line ending with a Fix (the CLI prints it and exits 1)."""


class AnswerError(Exception):
    """A version cannot be loaded or asked (`overnight ask`, `chat`, `compare --answers`, the dashboard's Try tab):
    one line naming the place, ending with a Fix."""


class DropError(ValueError):
    """A drop that cannot be added (not a dataset, a name already in the inbox): the text says the fix."""


class ServiceError(RuntimeError):
    """A unit cannot be written or removed; the message says why and what to do."""


class ExecutorError(RuntimeError):
    """The executor cannot run a trainer (sbatch refused the job, Slurm cannot run it): one line with the fix."""


class ExecutorUnreachable(ExecutorError):
    """The executor did not answer (slurmctld down, restarting, overloaded): the run waits in the queue, not fails."""


class ServeError(RuntimeError):
    """`overnight serve` cannot start as asked (a non-loopback address without a token, a bad [serve] table): one line
    ending with a Fix."""


class UploadError(ValueError):
    """An upload the server refuses before anything reaches the inbox (a bad name, a missing part, too large): the
    HTTP status and one line ending with a Fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
