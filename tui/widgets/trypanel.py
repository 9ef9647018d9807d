"""The Try tab: type a prompt, see what versions answer side by side (by default the active version, its parent and
the base model).

Generation never runs in the dashboard: each request is one `python -m daemon.trainer.answers` process (torch,
the models), started from a thread worker, at a lower CPU priority than training. That process decides where it
runs (the GPU only when the memory plan leaves a training run room, else the CPU) and says so; a new request, or
leaving the dashboard, ends the one still running.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Static
from textual.worker import get_current_worker

from tui.homedata import HomeSnapshot, ModelRow

NICE = 10  # the answers share the CPU with a training run: the run keeps its pace
WORKER = [sys.executable, "-m", "daemon.trainer.answers", "--nice", str(NICE)]
MAX_NEW_TOKENS = 96
BASE = "base"


def default_models(models: tuple[ModelRow, ...], name: str | None) -> list[str]:
    """The active version of `name` (else of the newest name with versions), its parent when registered, and base."""
    live = [m for m in models if not m.deleted]
    if not live:
        return []
    names = [m.name for m in live]
    chosen = name if name in names else max(live, key=lambda m: m.created or "").name
    versions = [m for m in live if m.name == chosen]
    active = next((m for m in versions if m.active), versions[-1])
    picked = [f"{active.name}:{active.version}"]
    if active.parent and any(f"{m.name}:{m.version}" == active.parent for m in live):
        picked.append(active.parent)
    return [*picked, BASE]


def parse_models(text: str) -> tuple[list[str], bool]:
    """The versions typed (`NAME`, `NAME:V`, separated by spaces or commas) and whether `base` is among them."""
    words = [w for w in re.split(r"[\s,]+", text.strip()) if w]
    return [w for w in words if w != BASE], BASE in words


class TryPanel(Vertical):
    """The prompt, the versions asked, and their answers in columns."""

    DEFAULT_CSS = """
    TryPanel { height: 1fr; }
    TryPanel .try-label { height: 1; width: 10; color: $text-muted; }
    TryPanel .try-row { height: 1; }
    TryPanel #try-status { height: auto; max-height: 4; color: $text-muted; }
    TryPanel #try-answers { height: 1fr; }
    TryPanel .try-answer { width: 1fr; height: auto; border: round $panel-lighten-2; padding: 0 1; }
    """

    class Answered(Message):
        """A request's answers ({"answers", "device", "device_why"}), or the one-line error it ended with."""

        def __init__(self, result: dict[str, Any] | None, error: str | None, seconds: float) -> None:
            super().__init__()
            self.result, self.error, self.seconds = result, error, seconds

    def __init__(self, home: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.home = home
        self.answered = 0  # requests answered so far (tests wait on it)
        self._edited = False  # the person typed the versions: defaults no longer replace them
        self._filling = False
        self._asking = False

    def compose(self) -> ComposeResult:
        with Horizontal(classes="try-row"):
            yield Static("versions", classes="try-label")
            self.models_input = Input(placeholder="NAME:V … base", id="try-models", compact=True)
            yield self.models_input
        with Horizontal(classes="try-row"):
            yield Static("prompt", classes="try-label")
            self.prompt_input = Input(placeholder="type a prompt, Enter asks every version above", id="try-prompt",
                                      compact=True)
            yield self.prompt_input
        self.status = Static(" no version registered yet: the first completed run makes one", id="try-status")
        yield self.status
        self.answers = Horizontal(id="try-answers")
        with VerticalScroll():
            yield self.answers

    def show(self, snap: HomeSnapshot, selected_name: str | None) -> None:
        """Keep the default versions in step with the registry until the person picks their own."""
        if not self._asking and not self.answered:
            self.status.update(" Enter in the prompt asks each version, in a process of its own" if snap.models else
                               " no version registered yet: the first completed run makes one")
        if self._edited:
            return
        picked = " ".join(default_models(snap.models, selected_name))
        if picked and picked != self.models_input.value:
            self._filling = True
            self.models_input.value = picked

    @on(Input.Changed, "#try-models")
    def _models_changed(self) -> None:
        if self._filling:
            self._filling = False
        else:
            self._edited = True

    @on(Input.Submitted, "#try-prompt")
    def _submitted(self, event: Input.Submitted) -> None:
        prompt = event.value
        refs, base = parse_models(self.models_input.value)
        if not prompt.strip():
            return
        if not refs:
            self.status.update(" name a version to ask (NAME or NAME:V; base asks its base model too)")
            return
        shown = " · ".join([*refs, *([BASE] if base else [])])
        self._asking = True
        self.status.update(f" asking {shown} (python -m daemon.trainer.answers, a process of its own)…")
        self._ask({"home": self.home, "refs": refs, "base": base, "prompt": prompt, "max_new_tokens": MAX_NEW_TOKENS})

    @work(thread=True, exclusive=True, group="try")
    def _ask(self, request: dict[str, Any]) -> None:
        """One answers process; cancelled (a newer request, the dashboard closing): the process is ended."""
        worker = get_current_worker()
        started = time.monotonic()
        proc = subprocess.Popen(WORKER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        pending: str | None = json.dumps(request)
        while True:
            try:
                out, err = proc.communicate(pending, timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pending = None  # written; a retry only goes on reading
                if worker.is_cancelled:
                    proc.kill()
                    proc.wait()
                    return
        seconds = time.monotonic() - started
        lines = [line for line in out.splitlines() if line.strip()]
        try:
            result = json.loads(lines[-1]) if lines else None
        except ValueError:
            result = None
        if not isinstance(result, dict):
            last = (err.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            self.post_message(self.Answered(None, f"the answers process failed: {last[:200]}", seconds))
        elif "error" in result:
            self.post_message(self.Answered(None, str(result["error"]), seconds))
        else:
            self.post_message(self.Answered(result, None, seconds))

    @on(Answered)
    def _answered(self, message: Answered) -> None:
        self.answered += 1
        self._asking = False
        self.answers.remove_children()
        if message.error is not None:
            self.status.update(f" {message.error}")
            return
        result = message.result or {}
        columns = []
        for a in result.get("answers", []):
            column = Static(a["answer"] or "(empty)", classes="try-answer", markup=False)
            column.border_title = a["model"]
            columns.append(column)
        self.answers.mount(*columns)
        self.status.update(f" answered on {result.get('device')} ({result.get('device_why')}) in "
                           f"{message.seconds:.1f} s")
