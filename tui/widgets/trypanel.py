"""The Try tab: type a prompt, see what versions answer side by side (by default the active version, its parent and
the base model).

Generation never runs in the dashboard: requests go to a `python -m daemon.trainer.answers` process (torch, the
models), driven from a thread worker, at a lower CPU priority than training. That process decides where it runs
(the GPU only when the memory plan leaves a training run room, else the CPU) and says so. It is kept between
requests with its models loaded, so the next prompt skips the load; it ends itself after IDLE_S seconds without a
request (its memory goes back to training). A new request while one is running, or leaving the dashboard, ends it.
"""
from __future__ import annotations

import contextlib
import json
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Static
from textual.worker import get_current_worker

from tui.homedata import HomeSnapshot, ModelRow

NICE = 10  # the answers share the CPU with a training run: the run keeps its pace
IDLE_S = 300  # a kept answers process gives its models' memory back after this long without a prompt
WORKER = [sys.executable, "-m", "daemon.trainer.answers", "--nice", str(NICE), "--idle", str(IDLE_S)]
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

    # Tab and Shift+Tab go between the prompt and the versions (the dashboard's focus chain would reach the runs
    # table, whose one-key commands a person still typing would trigger); Esc gives the keys back
    BINDINGS = [Binding("escape", "leave", "Leave the prompt"),
                Binding("tab,shift+tab", "other_input", "The other field", priority=True)]

    class Left(Message):
        """Esc in the prompt or the versions: the keys are the dashboard's again."""

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
        self._showing = False  # the status line says how the answers on screen were made (or why there are none)
        self._kept: AnswersProcess | None = None  # the answers process between requests, models loaded
        self._lock = threading.Lock()
        self._closed = False

    def compose(self) -> ComposeResult:
        with Horizontal(classes="try-row"):
            yield Static("versions", classes="try-label")
            # not selected on focus: the first key typed would replace the versions filled in
            self.models_input = Input(placeholder="NAME:V … base", id="try-models", compact=True,
                                      select_on_focus=False)
            yield self.models_input
        with Horizontal(classes="try-row"):
            yield Static("prompt", classes="try-label")
            self.prompt_input = Input(placeholder="type a prompt, Enter asks every version above", id="try-prompt",
                                      compact=True)
            yield self.prompt_input
        # markup off: the status repeats versions typed and errors, which may hold `[/` (a MarkupError otherwise)
        self.status = Static(" no version registered yet: the first completed run makes one", id="try-status",
                             markup=False)
        yield self.status
        self.answers = Horizontal(id="try-answers")
        with VerticalScroll():
            yield self.answers

    def action_leave(self) -> None:
        self.post_message(self.Left())

    def action_other_input(self) -> None:
        target = self.models_input if self.screen.focused is self.prompt_input else self.prompt_input
        target.focus()

    def show(self, snap: HomeSnapshot, selected_name: str | None) -> None:
        """Keep the default versions in step with the registry and the selected run until the person picks their
        own; the answers of the versions shown before are cleared."""
        note = ""
        if not self._edited:
            defaults = default_models(snap.models, selected_name)
            shown = defaults[0].partition(":")[0] if defaults else None
            if selected_name and shown and shown != selected_name:
                note = (f"{selected_name}, the selected run's name, has no version (no run of it completed): the "
                        f"newest model, {shown}, is shown. ")
            picked = " ".join(defaults)
            if picked and picked != self.models_input.value:
                self._filling = True
                self.models_input.value = picked
                if not self._asking:
                    self.answers.remove_children()
                    self._showing = False
        if not self._asking and not self._showing:
            self.status.update(f" {note}Enter in the prompt asks each version, in a process of its own"
                               if snap.models else " no version registered yet: the first completed run makes one")

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
            self._showing = True
            self.status.update(" name a version to ask (NAME or NAME:V; base asks its base model too)")
            return
        shown = " · ".join([*refs, *([BASE] if base else [])])
        self._asking = True
        self.status.update(f" asking {shown} (python -m daemon.trainer.answers, a process of its own)…")
        # no max_new_tokens: the answers process's default, as `overnight ask` answers
        self._ask({"home": self.home, "refs": refs, "base": base, "prompt": prompt})

    @work(thread=True, exclusive=True, group="try")
    def _ask(self, request: dict[str, Any]) -> None:
        """One request to the answers process; cancelled (a newer request, the dashboard closing): it is ended."""
        worker = get_current_worker()
        started = time.monotonic()
        proc, reused = self._take()
        line = proc.request(request, lambda: worker.is_cancelled)
        if line == "" and reused and not worker.is_cancelled:  # it had just ended itself (idle): a fresh one
            proc.end()
            proc = AnswersProcess()
            line = proc.request(request, lambda: worker.is_cancelled)
        if worker.is_cancelled:
            proc.end()
            return
        seconds = time.monotonic() - started
        try:
            result = json.loads(line) if line else None
        except ValueError:
            result = None
        if not isinstance(result, dict):
            proc.end()
            self.post_message(self.Answered(None, f"the answers process failed: {proc.last_error()}", seconds))
            return
        self._keep(proc)
        if "error" in result:
            self.post_message(self.Answered(None, str(result["error"]), seconds))
        else:
            self.post_message(self.Answered(result, None, seconds))

    def _take(self) -> tuple[AnswersProcess, bool]:
        """The kept process (True) if it still runs, else a new one: the request owns it until it is answered."""
        with self._lock:
            kept, self._kept = self._kept, None
        if kept is not None and kept.alive():
            return kept, True
        return AnswersProcess(), False

    def _keep(self, proc: AnswersProcess) -> None:
        """After an answer the process waits for the next request (the newest one answered is the one kept)."""
        with self._lock:
            if self._closed:  # the dashboard left while this request ran
                dropped = proc
            else:
                dropped, self._kept = self._kept, proc
        if dropped is not None:
            dropped.end()

    def on_unmount(self) -> None:
        with self._lock:
            self._closed, kept, self._kept = True, self._kept, None
        if kept is not None:
            kept.end()

    @on(Answered)
    async def _answered(self, message: Answered) -> None:
        self._asking, self._showing = False, True
        await self.answers.remove_children()  # the last answers are gone before the new ones show
        if message.error is not None:
            self.status.update(f" {message.error}")
        else:
            result = message.result or {}
            columns = []
            for a in result.get("answers", []):
                column = Static(a["answer"] or "(empty)", classes="try-answer", markup=False)
                column.border_title = Text(a["model"])  # a str title would be read as markup
                columns.append(column)
            await self.answers.mount(*columns)
            kept = ", models still loaded from the last prompt" if result.get("kept") else ""
            self.status.update(f" answered on {result.get('device')} ({result.get('device_why')}) in "
                               f"{message.seconds:.1f} s{kept}")
        self.answered += 1  # last: what a test waits for is on the screen

class AnswersProcess:
    """One `python -m daemon.trainer.answers`: a request a line in, an answer line out; its stderr in a temporary
    file (a pipe nobody reads while it waits could fill and block it)."""

    def __init__(self) -> None:
        self._err = tempfile.TemporaryFile()
        self.popen = subprocess.Popen(WORKER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
                                      text=True, start_new_session=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def request(self, request: dict[str, Any], cancelled: Callable[[], bool]) -> str:
        """Its answer line; "" when the process ended first or the request was cancelled."""
        stdin, stdout = self.popen.stdin, self.popen.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(json.dumps(request) + "\n")
            stdin.flush()
        except OSError:  # it ended before reading
            return ""
        while not cancelled():
            if select.select([stdout], [], [], 0.2)[0]:
                line = stdout.readline()
                if not line or line.lstrip().startswith("{"):  # anything else a library printed is not the answer
                    return line
            elif not self.alive():
                return ""
        return ""

    def end(self) -> None:
        if self.alive():
            self.popen.kill()
        self.popen.wait()
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def last_error(self) -> str:
        """The last line it wrote to stderr, else its exit code (read after end())."""
        text = ""
        with contextlib.suppress(OSError, ValueError):
            self._err.seek(0)
            text = self._err.read().decode("utf-8", errors="replace")
        last = text.strip().splitlines()
        return last[-1][:200] if last else f"exit code {self.popen.returncode}"
