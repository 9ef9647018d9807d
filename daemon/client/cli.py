"""`overnight`: every command of the appliance. Errors become one clear line and a non-zero exit."""
from __future__ import annotations

import json
import getpass
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from daemon import __version__
from daemon.core import morning, render
from daemon.core.completeness import SETTLE_S
from daemon.core.control import MAX_PRIORITY
from daemon.core.errors import AnswerError, DatasetError, NewerDB
from daemon.core.home import Home, HomeDamaged, HomeLocked, daemon_alive
from daemon.core.queries import BrokenDB, Reader, RefError
from daemon.core.states import LIVE, State
from daemon.core.versionpick import already_deleted, deleted_version, missing_adapter

home_option = click.option("--home", "home", type=click.Path(file_okay=False), default=None,
                           help="The home folder (default: $OVERNIGHT_HOME, else the current directory).")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _home(home: str | None, new: bool = False) -> Home:
    """The home, its folders created (a file where one belongs: one line with the fix, no traceback); a folder that
    is not there is a new home only for the daemon and the demo (`new`), a mistyped --home elsewhere."""
    h = _existing(home) if not new else Home.resolve(home, create=False)
    with _clean_errors(HomeDamaged):
        h.create()
    return h


def _existing(home: str | None) -> Home:
    """The home as it is; refused when its folder is not there (`overnight status --home /tmp/typo` would show an
    empty home and exit 0)."""
    h = Home.resolve(home, create=False)
    if not h.root.is_dir():
        raise click.ClickException(f"{h.root}: no such folder, so no overnight home there. Fix: check --home (or "
                                   f"$OVERNIGHT_HOME); {h.cli('daemon')} makes a new home there.")
    return h


def _reader(h: Home) -> Reader:
    return Reader(h.db)


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


@contextmanager
def _clean_errors(*kinds: type[Exception]):
    """A failure the user can fix is one line and exit 1, not a traceback."""
    try:
        yield
    except kinds as e:
        raise click.ClickException(str(e)) from None


class _Commands(click.Group):
    """The `overnight` group: a state DB that cannot be read, or a RUN or GROUP that names none or several, is one
    line with its fix for every command."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (BrokenDB, NewerDB, RefError) as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="overnight")
def main() -> None:
    """overnight: drop a dataset into inbox/, find a LoRA adapter in runs/ in the morning."""


# --- daemon ---------------------------------------------------------------------------------------------
@main.command()
@home_option
@click.option("--once", is_flag=True, help="Process the inbox and the queue, then exit.")
@click.option("--settle", type=float, default=SETTLE_S, show_default=True,
              help="Seconds a dropped file must stay unchanged (and closed) before it is taken: longer than the "
                   "longest pause of a slow writer.")
@click.option("--quiet", is_flag=True, help="Log only to overnight.log, not to the terminal.")
def daemon(home: str | None, once: bool, settle: float, quiet: bool) -> None:
    """Run the daemon in the foreground: watch inbox/ and control/, train the queue."""
    from daemon.engine.scheduler import Daemon
    with _clean_errors(HomeLocked):
        d = Daemon(_home(home, new=True), once=once, settle=settle, echo=not quiet)
    code = d.serve()
    if d.restart:  # overnight.db was removed under it: the same command again, which rebuilds it at start
        os.execv(sys.executable, [sys.executable, "-m", "daemon", *sys.argv[1:]])
    sys.exit(code)


# --- validation and dropping ----------------------------------------------------------------------------
@main.command()
@home_option
@json_option
@click.option("--show", type=click.IntRange(min=0), default=0, metavar="N",
              help="Also print a dataset's first N examples exactly as the model will see them, trained text marked.")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def check(home: str | None, as_json: bool, show: int, files: tuple[str, ...]) -> None:
    """Validate datasets, sidecars or probe files exactly as the daemon would, without queuing anything."""
    from daemon.client.checking import check_file
    h = Home.resolve(home, create=False)  # check works outside any home: the home only lends its overnight.toml
    verdicts = [check_file(Path(f), h, show) for f in files]
    if as_json:
        _echo_json([v.to_dict() for v in verdicts])
    else:
        colour = sys.stdout.isatty()
        for v in verdicts:
            click.echo(render.verdict(v))
            for number, example in enumerate(v.shown, 1):
                of = v.shown_of[number - 1] if number <= len(v.shown_of) else None
                click.echo(render.example(number, example, colour, v.shown_as, of))
    if not all(v.ok for v in verdicts):
        sys.exit(1)


@main.command()
@home_option
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--sidecar", type=click.Path(dir_okay=False), help="Options file to use as NAME.toml.")
@click.option("--probes", type=click.Path(dir_okay=False), help="Probe file to use as NAME.probes.jsonl.")
@click.option("--eval", "eval_file", type=click.Path(dir_okay=False),
              help="Eval records to use as NAME.eval.jsonl (scored at the end of the run).")
def add(home: str | None, file: str, sidecar: str | None, probes: str | None, eval_file: str | None) -> None:
    """Copy a dataset (and its sidecar, probes and eval file) into the inbox safely: the daemon never sees half a
    file."""
    from daemon.core import drop
    missing = [p for p in (file, sidecar, probes, eval_file) if p and not Path(p).is_file()]
    if missing:  # a bad file, as check says it: exit 1 (click's own check exits 2, a usage error)
        raise click.ClickException(f"{missing[0]} does not exist (or is not a file); nothing was added. Fix: check "
                                   f"the path.")
    h = _home(home)
    with _clean_errors(drop.DropError):
        drop.add(h, Path(file), sidecar, probes, on_added=lambda src, dest: click.echo(f"added {src} -> {dest}"),
                 eval_file=eval_file)


@main.command()
@home_option
@json_option
@click.option("--since", "since_h", type=click.FloatRange(min=0), default=morning.DEFAULT_SINCE_H,
              show_default=True, metavar="HOURS", help="List the runs that failed and the drops rejected this many "
                                                       "hours back.")
def status(home: str | None, as_json: bool, since_h: float) -> None:
    """The daemon, the running jobs (each with its GPU set), the queue and what needs you: failed runs, rejected
    drops, what holds the queue."""
    h = _existing(home)
    rd = _reader(h)
    if as_json:
        from daemon.core import jsonviews
        _echo_json(jsonviews.status(h, rd, since_h))
        return
    alive = daemon_alive(h)
    runs = rd.runs(LIVE)
    events = rd.control_events(5)
    problem = morning.problem(h, rd.daemon() if alive else None, alive)
    from daemon.core import control
    since = morning.cutoff(since_h)
    failed = morning.failed_runs(rd.runs((State.FAILED,)), since)
    rejected = morning.rejected_drops(h, since)
    held = morning.held(control.held(h, "stop"), problem)
    click.echo(f"home: {h.root}")
    click.echo(f"daemon: running (PID {alive['pid']}, since {alive['started']})" if alive else
               f"daemon: not running (start it with: {h.cli('daemon')})")
    if problem:
        click.echo(f"PROBLEM: {problem}")
    counts = rd.counts()
    click.echo("runs: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"))
    if held and held != morning.HELD_BY_STOP:  # the PROBLEM line just said it whole
        held = "the PROBLEM above"
    paused = control.paused(h)
    if runs:
        click.echo(render.runs_table(runs, held, paused, daemon_down=not alive))
    shown = any(r["state"] == State.QUEUED for r in runs)  # the table's last line said what holds them
    for line in render.morning(failed, rejected, None if shown else held, since_h, "*" in paused,
                               morning.waiting_files(h)):
        click.echo(line)
    for e in reversed(events):
        click.echo(f"control {e['time']}: {e['status']}: {e['message']}")


@main.command()
@home_option
@json_option
def runs(home: str | None, as_json: bool) -> None:
    """Every run: active, queued (in order), then history; REASON: why a run failed, stopped or was skipped."""
    h = _existing(home)
    rd = _reader(h)
    rows = rd.runs()
    if as_json:
        _echo_json(rows)
        return
    if not rows and _said_db_missing(h):
        return
    from daemon.core import control
    alive = daemon_alive(h)
    click.echo(render.runs_table(rows, morning.held(control.held(h, "stop"),
                                                   morning.problem(h, rd.daemon() if alive else None, alive)),
                                 control.paused(h), daemon_down=not alive))


def _find_run(h: Home, ref: str) -> dict[str, Any]:
    """The run RUN names (queries.Reader.named_run: one run, or a RefError the group prints as one line)."""
    return _reader(h).named_run(ref)


@main.command()
@home_option
@click.argument("run")
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing new lines as they are written, until the run ends (Ctrl-C stops earlier).")
@click.option("-n", "--lines", type=int, default=0, help="Only the last N lines.")
def logs(home: str | None, run: str, follow: bool, lines: int) -> None:
    """A run's console.log."""
    from daemon.core.rundir import LogTail, RunFolder
    from daemon.core.states import ENDED
    rd = _reader(_existing(home))
    found = rd.named_run(run)
    tail = LogTail(RunFolder(found["run_dir"]).console, keep=lines or None)
    try:
        while True:
            state = (rd.run(found["id"]) or {}).get("state") if follow else None
            update = tail.poll()  # after reading the state: an ended run's last lines are in this poll
            for line in update.lines if update else ():
                click.echo(line)
            if state in ENDED:
                click.echo(f"--- {found['id']} {state}: nothing more to follow", err=True)
            if not follow or state in ENDED:
                return
            time.sleep(0.25)
    except KeyboardInterrupt:
        pass


# --- steering (writes control files; the daemon applies them) ---------------------------------------------
wait_option = click.option("--wait", "wait", type=click.FloatRange(min=0), default=3.0, show_default=True,
                           metavar="SECONDS", help="How long to wait for the daemon's answer (0: don't wait).")


def _parse(kind: str, content: str):
    """The daemon's own parser: a command it would reject is never written."""
    from daemon.core import control
    try:
        return control.parse_text(kind, content)
    except control.ControlError as e:
        raise click.ClickException(str(e)) from None


def _send(h: Home, kind: str, content: str = "", wait: float = 3.0) -> None:
    """Write the command and print the daemon's answers; an answer that rejects it exits 1, so that a script
    can trust the exit code."""
    from daemon.core import control
    _parse(kind, content)
    with _clean_errors(HomeDamaged):
        h.create()  # only now: a command refused above leaves a folder that is no home as it was
    with _clean_errors(control.NotSent):
        ticket = control.send(h, kind, content)
    click.echo(f"wrote {ticket.path}")
    if not daemon_alive(h):
        click.echo(f"no daemon is running: it applies this when it starts ({h.cli('daemon')})")
        return
    if wait <= 0:
        click.echo("not waiting for the daemon's answer; see overnight status")
        return
    answers = ticket.wait(h, wait)
    for e in answers:
        click.echo(f"{e['status']}: {e['message']}")
    if not answers:
        click.echo(f"not acknowledged yet (waited {wait:g} s); see overnight status")
    if any(e["status"] == "rejected" for e in answers):
        sys.exit(1)


def _steer(kind: str, doc: str):
    @main.command(name=kind, help=doc)
    @home_option
    @click.argument("run", required=False)
    @wait_option
    def _cmd(home: str | None, run: str | None, wait: float) -> None:
        _not_blank(run)
        h = _existing(home)
        if kind == "stop" and not run:
            _stop_all(h, wait)
        else:
            _send(h, kind, _steerable(h, kind, run)["id"] if run else "", wait)
    return _cmd


def _steerable(h: Home, kind: str, ref: str) -> dict[str, Any]:
    """The run RUN names, when `kind` can act on it: a command the daemon would reject for the run's state is refused
    here (exit 1), also while no daemon runs, instead of being written to fail at its next start."""
    from daemon.core.states import LIVE, State
    run = _find_run(h, ref)
    if kind == "resume" and run["state"] == State.COMPLETED:
        raise click.ClickException(f"run {run['id']} is completed: it has nothing left to train. Fix: to train its "
                                   f"version further, drop a dataset whose sidecar sets init_adapter = "
                                   f"\"{run['name']}\" (Continue from yesterday's adapter, in the README).")
    if kind != "resume" and run["state"] not in LIVE:
        raise click.ClickException(f"run {run['id']} is {run['state']}; {kind} applies to runs that are "
                                   f"{' or '.join(LIVE)}. Fix: name such a run (see overnight runs).")
    return run


def _not_blank(run: str | None) -> None:
    """A RUN given but empty (`overnight pause "$RUN"` with RUN unset) would act on every run: refused."""
    if run is not None and not run.strip():
        raise click.UsageError("RUN is empty. Fix: name a run (see overnight runs), or leave RUN out to act on every "
                               "run.")


def _stop_all(h: Home, wait: float) -> None:
    """A stop naming no run also holds the queue (even when nothing runs): say how to lift it. The daemon answers a
    held control/stop once, so a second one is told at once that it is in place instead of waiting for no answer."""
    from daemon.core import control
    if control.held(h, "stop") == "*":
        click.echo(f"already stopped: {h.control / 'stop'} is in place")
    else:
        _send(h, "stop", "", wait)
    click.echo("no new job starts until: overnight resume")


_steer("pause", "Pause RUN (without RUN: every running job) at the next step; it stays paused until resumed.")
_steer("stop", "Checkpoint and stop RUN; without RUN, every running job, and no new job starts until resume.")
_steer("skip", "Checkpoint RUN (or the one running job), mark it skipped, and go on with the queue.")


@main.command()
@home_option
@click.argument("run", required=False)
@wait_option
def resume(home: str | None, run: str | None, wait: float) -> None:
    """Lift a pause or an untargeted stop; with RUN, queue a stopped/skipped/failed run again from its checkpoint."""
    _not_blank(run)
    h = _existing(home)
    _send(h, "resume", _steerable(h, "resume", run)["id"] if run else "", wait)


@main.command(context_settings={"ignore_unknown_options": True})  # `priority RUN -3`: a value, not an option
@home_option
@click.argument("run")
@click.argument("value", type=click.IntRange(-MAX_PRIORITY, MAX_PRIORITY))
@wait_option
def priority(home: str | None, run: str, value: int, wait: float) -> None:
    """Set a run's priority (higher first); a queued run above the running one preempts it. A sweep's GROUP id, or
    the NAME its runs share, sets every queued or running run of it; a NAME still in the inbox, its run."""
    from daemon.core.priority import prioritised
    h = _existing(home)
    _send(h, "priority", "\n".join(f"{ref} {value}" for ref in prioritised(h, run)), wait)


# --- models --------------------------------------------------------------------------------------------
@main.command()
@home_option
@json_option
def models(home: str | None, as_json: bool) -> None:
    """Registered model versions; * marks the active one of each name."""
    h = _existing(home)
    rows = _reader(h).models()
    if as_json:
        _echo_json(rows)
    elif rows or not _said_db_missing(h):
        click.echo(render.models(rows))


def _said_db_missing(h: Home) -> bool:
    """overnight.db gone while runs/ holds runs: said (as status says it), not shown as an empty home."""
    missing = morning.missing_db_problem(h)
    if missing:
        click.echo(missing)
    return missing is not None


@main.command()
@home_option
@click.argument("name", metavar="NAME[:V]")
@click.argument("version", type=int, required=False)
@wait_option
def activate(home: str | None, name: str, version: int | None, wait: float) -> None:
    """Make VERSION the active version of NAME (it stays active when newer versions arrive)."""
    h = _existing(home)
    _send(h, "activate", _model_version(h, "activate", name, version), wait)


@main.command()
@home_option
@click.argument("name", metavar="NAME[:V]")
@click.argument("version", type=int, required=False)
@wait_option
def delete(home: str | None, name: str, version: int | None, wait: float) -> None:
    """Move a model version's adapter into trash/ (nothing is erased)."""
    h = _existing(home)
    _send(h, "delete", _model_version(h, "delete", name, version), wait)


def _model_version(h: Home, kind: str, name: str, version: int | None) -> str:
    """`NAME VERSION` (or `NAME:VERSION`) for control/KIND, refused here when the registry has no such version: the
    daemon would reject it, and without a daemon nothing would say so until it starts."""
    if version is None:
        head, colon, tail = name.rpartition(":")
        if not (colon and tail.isdigit()):
            raise click.UsageError(f"give the version: overnight {kind} {name} VERSION (or {name}:VERSION); "
                                   f"overnight models lists them.")
        name, version = head, int(tail)
    content = f"{name} {version}"
    name, version = _parse(kind, content).model
    versions = [m for m in _reader(h).models() if m["name"] == name]
    row = next((m for m in versions if m["version"] == version), None)
    if row is None:
        known = ", ".join(f"v{m['version']}" for m in versions)
        raise click.ClickException(f"no model {name} version {version} "
                                   f"({f'{name} has {known}' if known else 'no model has that name'}). "
                                   f"Fix: use a NAME and VERSION that overnight models lists.")
    if kind == "activate" and row["deleted"]:
        raise click.ClickException(deleted_version(name, row))
    if kind == "delete" and row["deleted"]:  # the daemon's own refusal, said now
        raise click.ClickException(already_deleted(name, row))
    if kind == "activate" and missing_adapter(row):
        raise click.ClickException(missing_adapter(row))
    return content


@main.command()
@click.option("--home", "home", type=click.Path(file_okay=False), default="overnight-demo", show_default=True,
              help="The demo's own home ($OVERNIGHT_HOME is not used: the demo never trains in your home).")
@click.option("--no-tui", is_flag=True, help="Print progress lines instead of opening the dashboard; exit when done.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Training steps (default 200): fewer for a quick look, more to watch the probes settle.")
def demo(home: str | None, no_tui: bool, steps: int | None) -> None:
    """The whole loop on the embedded tiny model: build it, drop a task, train, watch the probes being learned."""
    from daemon.client import demo as d
    from daemon.core.rundir import RunFolder
    from tui.app import no_terminal
    h = _home(home, new=True)
    click.echo(f"demo home: {h.root}")
    if not no_tui and no_terminal():  # no screen to draw on: the progress lines instead
        click.echo(f"{no_terminal()}; showing progress lines instead (--no-tui)")
        no_tui = True
    name = d.prepare(h, click.echo, steps)
    proc = d.start_daemon(h)
    try:
        if no_tui:
            run = d.follow(h, name, click.echo)
            if run and run["state"] == State.COMPLETED:
                click.echo(f"\n{run['id']} completed. Adapter: {RunFolder(run['run_dir']).adapter}\n"
                           f"See what it learned: overnight evolution {run['id']} --home {h.root}")
            else:
                reason = f" ({run['reason']})" if run and run["reason"] else ""
                click.echo(f"\nthe demo run did not complete{reason}; see {h.root / 'runs'}/*/console.log")
                sys.exit(1)
        else:
            from tui.app import run as run_tui
            code = run_tui(h.root)
            if code:
                sys.exit(code)
    finally:
        d.stop_daemon(proc)


@main.command()
@home_option
def tui(home: str | None) -> None:
    """The full-screen dashboard (keyboard only; works over SSH at 80x24)."""
    from tui.app import no_terminal, run as run_tui
    root = _existing(home).root
    problem = no_terminal()
    if problem:  # without a terminal it would run forever, drawing for nobody
        click.echo(problem, err=True)
        sys.exit(1)
    sys.exit(run_tui(root))  # 1 when the dashboard crashed


@main.command()
@home_option
@click.option("--host", default=None, help="Address to listen on (default: [serve] host in overnight.toml, else "
                                          "127.0.0.1). Any other than loopback needs the tokens (--token).")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port (default: [serve] port, else 8642).")
@click.option("--token", "new_token", is_flag=True,
              help="Require tokens (read, and steer), creating them in the home (mode 0600) if absent; printed once.")
def serve(home: str | None, host: str | None, port: int | None, new_token: bool) -> None:
    """The HTTP API (/api/, schema at /api/openapi.json) and the dashboard in a browser (/dashboard/)."""
    from daemon.core.errors import ServeError
    from daemon.web import server
    h = _home(home)
    with _clean_errors(ServeError):
        settings = server.settings(h, host, port)
        server.refuse_open(h, settings, new_token)  # before the port is taken: nothing else to undo
        sock = server.listen(settings)  # before tokens are made or the home touched: a taken port changes nothing
        tokens = server.prepare(h, settings, new_token, click.echo)
        server.run(h, settings, tokens, click.echo, sock)


@main.command()
@home_option
@json_option
@click.argument("run", metavar="RUN|NAME[:V]")
def evolution(home: str | None, as_json: bool, run: str) -> None:
    """What the model answered on each probe over time, and when each was learned or forgotten (RUN, or the run
    that trained a model version)."""
    from daemon.core.evolution import format_report, load_records, run_report
    from daemon.core.rundir import RunFolder
    h = _existing(home)
    r, _ = _run_or_version(h, run)
    if as_json:
        from daemon.core import jsonviews
        _echo_json(jsonviews.evolution(r))
    else:
        report = run_report(Path(r["run_dir"]), load_records(RunFolder(r["run_dir"]).evolution))
        click.echo(f"{r['id']} ({r['state']})")
        click.echo(format_report(report, width=shutil.get_terminal_size((100, 24)).columns))


# --- the morning after: try a version ------------------------------------------------------------------------
max_tokens_option = click.option("--max-new-tokens", "max_new_tokens", type=click.IntRange(min=1), default=128,
                                 show_default=True, help="The longest answer, in tokens.")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                             show_default=True, help="Where to generate (auto: the GPU when the model fits in its "
                             "free memory, leaving a training run room to grow; else the CPU).")


def _width() -> int:
    return shutil.get_terminal_size((100, 24)).columns


def _note(quiet: bool):
    """Progress notes (loading …) on stderr, so that stdout holds only the answers."""
    return (lambda line: None) if quiet else (lambda line: click.echo(line, err=True))


@main.command()
@home_option
@click.argument("ref", metavar="NAME[:V]")
@click.option("--base", is_flag=True, help="Chat with the version's base model (through the same template).")
@max_tokens_option
@device_option
def chat(home: str | None, ref: str, base: bool, max_new_tokens: int, device: str) -> None:
    """Chat with a model version in the terminal, through its training chat template, answers streamed."""
    import signal

    from daemon.client.trying import chat as talk
    h = _existing(home)
    # Ctrl-C stops an answer: Python raises KeyboardInterrupt only when SIGINT is not ignored, and a shell starts a
    # background job (`overnight chat … &`, nohup) with it ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def write(text: str) -> None:
        click.echo(text, nl=False)
        sys.stdout.flush()

    with _clean_errors(AnswerError):
        talk(h.root, ref, base, input, write, max_new_tokens, device)


@main.command()
@home_option
@json_option
@click.argument("args", metavar="NAME[:V]... PROMPT", nargs=-1, required=True)
@click.option("--base", is_flag=True, help="The base model's answer too (through the first version's template).")
@max_tokens_option
@device_option
def ask(home: str | None, as_json: bool, args: tuple[str, ...], base: bool, max_new_tokens: int, device: str) -> None:
    """One prompt, the greedy answers of several versions side by side (NAME: its active version)."""
    from daemon.client.trying import ask_text
    from daemon.trainer.answers import ask as answers
    if len(args) < 2:
        raise click.UsageError("give one model version or more, then the prompt: overnight ask NAME[:V]... PROMPT")
    h = _existing(home)
    with _clean_errors(AnswerError):
        result = answers(h.root, args[:-1], args[-1], base, max_new_tokens, log=_note(as_json), device=device)
    _echo_json(result) if as_json else click.echo(ask_text(result, _width()))


def _run_or_version(h: Home, ref: str) -> tuple[dict[str, Any], str]:
    """The run RUN names, else the run of the model version `NAME[:V]` names (NAME: its active version), with how to
    call it ("support v2 (run …)"); a ref that names neither is the run lookup's error."""
    from daemon.core.versionpick import NoVersion, pick_version
    from daemon.trainer.answers import parse_ref
    rd = _reader(h)
    try:
        run = rd.named_run(ref)
        return run, run["id"]
    except RefError as not_a_run:
        try:
            name, version = parse_ref(ref)
        except RefError:
            raise not_a_run from None
        models = rd.models()
        if all(m["name"] != name for m in models):
            raise not_a_run from None
        try:
            row = pick_version(models, name, version)
        except NoVersion as e:
            if e.trashed is None:
                raise RefError(f"no model version {ref!r}: {e.why}. Fix: {e.fix}.") from None
            row = e.trashed  # deleted: its run, whose export says where the adapter went and how to get it
        run = rd.run(row["run_id"])
        if run is None:
            raise RefError(f"{name} v{row['version']} names run {row['run_id']}, which overnight.db does not list. "
                           f"Fix: overnight doctor --rebuild (the DB is rebuilt from the run folders).") from None
        return run, f"{name} v{row['version']} (run {run['id']})"


@main.command(name="export")
@home_option
@click.argument("ref", metavar="RUN|NAME[:V]")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--merge", is_flag=True, help="Write the base model with the adapter merged in (a standalone model).")
def export_cmd(home: str | None, ref: str, out: str, merge: bool) -> None:
    """Write a run's adapter (or the merged model) to OUT for serving elsewhere; a model version (NAME: its active
    one, NAME:V) names its run."""
    from daemon.client.export import ExportError, export
    h = _existing(home)
    r, label = _run_or_version(h, ref)
    with _clean_errors(ExportError):
        # trust_remote_code as the run was queued with (its config.json), as for training: one value per run
        note = export(Path(r["run_dir"]), h.root, Path(out).resolve(), merge, base_model=r["base_model"],
                      log=click.echo)
    click.echo(f"{'merged model' if merge else 'adapter'} of {label} written to {Path(out).resolve()}")
    if note:
        click.echo(note)


@main.command()
@home_option
@json_option
@click.argument("refs", metavar="RUN RUN...|GROUP", nargs=-1, required=True)
@click.option("--answers", is_flag=True, help="Compare model versions (NAME[:V]…) by what they answer: their runs' "
              "probes (or --prompts), scored against the references.")
@click.option("--base", is_flag=True, help="With --answers: the base model's answers too.")
@click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --answers: a JSONL file of {\"prompt\"} or {\"messages\"}, each with an optional "
                   "\"reference\".")
@max_tokens_option
@device_option
def compare(home: str | None, as_json: bool, refs: tuple[str, ...], answers: bool, base: bool,
            prompts_file: str | None, max_new_tokens: int, device: str) -> None:
    """Runs side by side, best first (eval loss, else final loss): probes learned, tokens/s, wall time and the
    options that differ. GROUP: a sweep's group id, or its name when one group has it; a RUN may be a model version
    (NAME:V, the run that trained it). With --answers, REFS are model versions, compared answer by answer."""
    from daemon.core.sweep import comparison
    h = _existing(home)
    if answers or base or prompts_file:
        from daemon.client.trying import compare_answers, compare_text
        with _clean_errors(AnswerError, DatasetError):
            result = compare_answers(h.root, refs, base, Path(prompts_file) if prompts_file else None, max_new_tokens,
                                     log=_note(as_json), device=device)
        _echo_json(result) if as_json else click.echo(compare_text(result, _width()))
        return
    reader = _reader(h)
    if len(refs) > 1:  # runs, groups or model versions (NAME:V: the run that trained it)
        refs = tuple(r if reader.group_runs(r) else _run_or_version(h, r)[0]["id"] for r in refs)
    group, runs = reader.compared(refs)
    rows = comparison(runs, reader.rungs([r["id"] for r in runs]))
    _echo_json(rows) if as_json else click.echo(render.comparison(rows, group))


# --- start on boot -------------------------------------------------------------------------------------------
@main.group()
def service() -> None:
    """Start the daemon at boot: a systemd unit for one home (install, print, uninstall)."""


user_option = click.option("--user", "user", is_flag=True,
                           help="A user unit (~/.config/systemd/user) instead of a system one (/etc/systemd/system).")
serve_unit_option = click.option("--serve", "serve", is_flag=True,
                                 help="The unit of overnight serve (the HTTP API and dashboard) instead of the daemon's.")


def _unit(home: str | None, user: bool, create: bool, serve: bool = False):
    from daemon.client import service as svc
    return svc.unit_for(Home.resolve(home, create=create).root, user, serve)


@service.command(name="print")
@home_option
@user_option
@serve_unit_option
def service_print(home: str | None, user: bool, serve: bool) -> None:
    """Show the unit `install` would write, without writing it."""
    _existing(home)  # a mistyped --home gets no unit: install would refuse it
    unit = _unit(home, user, create=False, serve=serve)
    click.echo(f"# {unit.path}")
    click.echo(unit.text, nl=False)


@service.command(name="install")
@home_option
@user_option
@serve_unit_option
def service_install(home: str | None, user: bool, serve: bool) -> None:
    """Write the unit that runs `overnight daemon --home H` (--serve: `overnight serve --home H`) at boot, then say
    how to enable it."""
    from daemon.client import service as svc
    unit = _unit(home, user, create=False, serve=serve)
    with _clean_errors(svc.ServiceError, HomeDamaged):
        replaced = svc.install(unit)  # refuses a home that does not exist
        Home(unit.home).create()  # its folders, as the daemon will want them
    click.echo(f"{'updated' if replaced else 'wrote'} {unit.path}\nEnable and start it (and follow its log):")
    for line in svc.enable_lines(unit):
        click.echo(f"  {line}")
    if user:
        click.echo(f"A user service starts when you log in; to start it at boot without a login: "
                   f"loginctl enable-linger {getpass.getuser()}")


@service.command(name="uninstall")
@home_option
@user_option
@serve_unit_option
def service_uninstall(home: str | None, user: bool, serve: bool) -> None:
    """Remove the unit `install` wrote for this home (only that file; disable it first)."""
    from daemon.client import service as svc
    unit = _unit(home, user, create=False, serve=serve)
    with _clean_errors(svc.ServiceError):
        svc.uninstall(unit)
    click.echo(f"removed {unit.path}\nThen run: {svc.systemctl(unit)} daemon-reload")


# --- the DB is an index of runs/ -----------------------------------------------------------------------------
@main.command()
@home_option
@json_option
@click.option("--rebuild", is_flag=True, help="Move overnight.db aside (never deleted) and rebuild it from runs/.")
def doctor(home: str | None, as_json: bool, rebuild: bool) -> None:
    """Check overnight.db (integrity, schema, runs/ against the index); exit 1 on a problem. --rebuild: build a
    fresh DB from the run folders."""
    from daemon.engine import rebuild as rb
    h = _existing(home)
    if rebuild:
        _doctor_rebuild(h)
        return
    fine, findings = rb.diagnose(h, daemon_running=bool(daemon_alive(h)))
    if as_json:
        _echo_json({"ok": not findings, "fine": fine,
                    "problems": [{"problem": f.problem, "fix": f.fix} for f in findings]})
    else:
        click.echo("\n".join([*(f"ok: {line}" for line in fine),
                              *(f"PROBLEM: {f.problem}\n  Fix: {f.fix}" for f in findings)]))
    sys.exit(1 if findings else 0)


def _doctor_rebuild(h: Home) -> None:
    from daemon.engine import rebuild as rb
    if not h.root.is_dir():
        raise click.ClickException(f"{h.root} does not exist. Fix: give the home with --home DIR or $OVERNIGHT_HOME.")
    try:
        aside, recovered = rb.rebuild_locked(h)
    except HomeLocked:
        alive = daemon_alive(h) or {}
        raise click.ClickException(
            f"a daemon (PID {alive.get('pid', '?')}) serves {h.root} and holds overnight.db open: the DB is not "
            f"rebuilt under it. Fix: restart the daemon (it rebuilds an unusable DB by itself at start), or stop "
            f"it (kill -TERM {alive.get('pid', 'PID')}) and run overnight doctor --rebuild again.") from None
    if aside:
        click.echo(f"moved the old DB aside: {aside}")
    click.echo(f"rebuilt {h.db} from {h.runs}: {recovered.summary()}")
    for r in recovered.runs:
        click.echo(f"  {r['id']}  {r['state']}  loss {render.fmt_loss(r['loss'])}"
                   f"{'  (' + r['reason'] + ')' if r['reason'] else ''}")
