"""The HTTP API: one handler per question or command, each answering with the document the CLI prints with --json
(daemon/core/jsonviews.py, queries.Reader) or the daemon's acknowledgement of the command it wrote. The OpenAPI
schema (/api/openapi.json) is built from the handlers' docstrings (the YAML after `---`)."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import re
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Match, Route
from starlette.schemas import SchemaGenerator

from daemon import __version__
from daemon.core import control, jsonviews, morning
from daemon.core.errors import BrokenDB, ControlError, DropError, HomeDamaged, RefError, UploadError
from daemon.core.home import Home, daemon_alive
from daemon.core.options import LiveSetting
from daemon.core.priority import prioritised
from daemon.core.queries import Reader
from daemon.core.rundir import RunFolder, read_jsonl
from daemon.core.states import ENDED, State
from daemon.web import logs, serverlog, steer, upload, verdict
from daemon.web.auth import NoFraming, TokenAuth
from daemon.web.dashboard import PREFIX, Dashboard
from daemon.web.tokens import Live, Tokens

MAX_VERDICT_WAIT_S = 600.0
STEERING = ("pause", "resume", "stop", "skip", "priority")
RUNS_FRESH_S = 1.0
schemas = SchemaGenerator({"openapi": "3.0.0", "info": {"title": "overnight", "version": __version__}})


class BadRequest(ValueError):
    """A query parameter that cannot be understood: 400, one line with the fix."""


class Json(JSONResponse):
    """The CLI's JSON: non-ASCII kept, anything else (paths, times) as its text."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, default=str).encode("utf-8")


def _float(request: Request, name: str, default: float) -> float:
    try:
        value = float(request.query_params.get(name, default))
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise BadRequest(f"?{name}= must be a number, 0 or more. Fix: e.g. ?{name}=10")
    return value


def _offset(value: str | None) -> int:
    """A byte offset into a log (?offset=, or the Last-Event-ID a reconnecting EventSource sends)."""
    if not value:
        return 0
    if not re.fullmatch(r"[0-9]{1,18}", value):  # ASCII digits only (isdigit takes '²'), and a size a file can have
        raise BadRequest(f"offset {value[:40]!r} is not a byte offset. Fix: ?offset=0, or a next_offset this API "
                         f"gave")
    return int(value)


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown client"


class Api:
    def __init__(self, h: Home, stopping: Callable[[], bool]) -> None:
        self.h = h
        self.stopping = stopping  # the server is shutting down: open log streams end (no task left to cancel)
        self.max_upload_mb = LiveSetting(h.toml, "max_upload_mb")  # live: read again when overnight.toml changes
        self._telemetry: Any = None
        self._runs_cache: tuple[tuple, float, bytes] | None = None
        self._runs_lock = threading.Lock()
        self._telemetry_lock = threading.Lock()

    @contextmanager
    def reader(self) -> Iterator[Reader]:
        rd = Reader(self.h.db)
        try:
            yield rd
        finally:
            rd.close()

    def run_of(self, request: Request) -> dict[str, Any]:
        with self.reader() as rd, _runs_fix():
            return rd.named_run(request.path_params["run"])

    # --- reading -------------------------------------------------------------------------------------------
    def status(self, request: Request) -> Response:
        """The daemon, the running jobs, the last commands and what needs you (overnight status --json).
        ---
        summary: overnight status --json
        parameters: [{name: since, in: query, schema: {type: number}, description: hours of failures to list}]
        """
        with self.reader() as rd:
            return Json(jsonviews.status(self.h, rd, _float(request, "since", morning.DEFAULT_SINCE_H)))

    def runs(self, request: Request) -> Response:
        """Every run: active, queued (in order), then history (overnight runs --json).
        ---
        summary: overnight runs --json
        """
        # the list many pages poll: built again only when the DB changed (or after RUNS_FRESH_S, which bounds what
        # a change within one tick of the file clock could hide)
        key = self._db_version()
        with self._runs_lock:  # one request builds it; those arriving meanwhile take what it built
            now, cached = time.monotonic(), self._runs_cache
            if not (cached and cached[0] == key and now - cached[1] < RUNS_FRESH_S):
                with self.reader() as rd:
                    cached = self._runs_cache = (key, now, Json(rd.runs()).body)
        return Response(cached[2], media_type="application/json")

    def _db_version(self) -> tuple:
        """What changes whenever the daemon commits: overnight.db's and its WAL's size and modification time."""
        out = []
        for p in (self.h.db, self.h.db.with_name(self.h.db.name + "-wal")):
            try:
                st = p.stat()
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return tuple(out)

    def run(self, request: Request) -> Response:
        """One run, named by its id, a unique prefix or its dataset's name (as the CLI's RUN).
        ---
        summary: one run
        parameters: [{name: run, in: path, required: true, schema: {type: string}}]
        """
        return Json(self.run_of(request))

    def metrics(self, request: Request) -> Response:
        """The run's metrics.jsonl, one object per line.
        ---
        summary: a run's metrics
        parameters: [{name: run, in: path, required: true, schema: {type: string}}]
        """
        return Json(read_jsonl(RunFolder(self.run_of(request)["run_dir"]).metrics))

    def evolution(self, request: Request) -> Response:
        """What the model answered on each probe over time (overnight evolution RUN --json).
        ---
        summary: overnight evolution RUN --json
        parameters: [{name: run, in: path, required: true, schema: {type: string}}]
        """
        return Json(jsonviews.evolution(self.run_of(request)))

    def log(self, request: Request) -> Response:
        """The run's console.log from byte `offset`: whole lines, and the offset to ask from next.
        ---
        summary: a run's console log from an offset
        parameters: [{name: run, in: path, required: true, schema: {type: string}},
                     {name: offset, in: query, schema: {type: integer}}]
        """
        run = self.run_of(request)
        start, text, after = logs.read_from(RunFolder(run["run_dir"]).console,
                                            _offset(request.query_params.get("offset")))
        return Json({"run": run["id"], "offset": start, "next_offset": after, "text": text})

    async def log_stream(self, request: Request) -> Response:
        """The run's console.log followed live, as server-sent events (one per line; `end` when the run has ended).
        ---
        summary: a run's console log, live (text/event-stream)
        parameters: [{name: run, in: path, required: true, schema: {type: string}},
                     {name: offset, in: query, schema: {type: integer}}]
        """
        run = await asyncio.to_thread(self.run_of, request)
        offset = _offset(request.headers.get("last-event-id") or request.query_params.get("offset"))

        def ended() -> bool:
            with self.reader() as rd:
                row = rd.run(run["id"])
            return row is None or row["state"] in ENDED

        return StreamingResponse(logs.follow(RunFolder(run["run_dir"]).console, offset, ended, self.stopping),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def models(self, request: Request) -> Response:
        """Registered model versions (overnight models --json).
        ---
        summary: overnight models --json
        """
        with self.reader() as rd:
            return Json(rd.models())

    def queue(self, request: Request) -> Response:
        """The queued runs in the order they will start, and what holds them (a stop, a pause, a daemon problem).
        ---
        summary: the queue and what holds it
        """
        alive = daemon_alive(self.h)
        with self.reader() as rd:
            problem = morning.problem(self.h, rd.daemon() if alive else None, alive)
            return Json({"runs": rd.runs((State.QUEUED,)), "held": morning.held(control.held(self.h, "stop"), problem),
                         "paused": sorted(control.paused(self.h)), "daemon": alive, "problem": problem})

    def system(self, request: Request) -> Response:
        """The GPUs (NVML: use, memory, processes) and the system (CPU, RAM, the home's disk), as the dashboard shows.
        ---
        summary: GPU and system
        """
        from tui.telemetry import LiveTelemetry  # psutil and NVML only (no Textual)
        with self._telemetry_lock:
            if self._telemetry is None:
                self._telemetry = LiveTelemetry(self.h.root)
                time.sleep(0.25)  # CPU use is measured between two samples: the first request's would read 0%
            sample = self._telemetry.sample()
        return Json(dataclasses.asdict(sample))

    def openapi(self, request: Request) -> Response:
        """This schema.
        ---
        summary: the OpenAPI schema
        """
        return Json(_completed(schemas.get_schema(routes=request.app.routes)))

    # --- writing -------------------------------------------------------------------------------------------
    async def upload(self, request: Request) -> Response:
        """A drop: multipart parts `dataset` (required), `sidecar`, `probes` and `eval`, streamed to disk and put into
        the inbox as `overnight add` does; answered with the daemon's verdict (the runs queued, or the .error.txt text).
        ---
        summary: upload a dataset (+ sidecar, probes, eval file) and wait for the daemon's verdict
        parameters: [{name: wait, in: query, schema: {type: number}, description: seconds to wait (default 60)}]
        requestBody: {content: {multipart/form-data: {schema: {type: object, properties: {
            dataset: {type: string, format: binary}, sidecar: {type: string, format: binary},
            probes: {type: string, format: binary}, eval: {type: string, format: binary}}}}}}
        responses: {201: {description: queued}, 422: {description: rejected by the daemon},
                    202: {description: not taken yet}, 413: {description: over max_upload_mb}}
        """
        wait = min(_float(request, "wait", 60.0), MAX_VERDICT_WAIT_S)
        limit = int(await asyncio.to_thread(self.max_upload_mb) * 2**20)
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise upload.too_large(limit)
        try:
            staged = await upload.receive(self.h, request.headers.get("content-type", ""), request.stream(), limit)
        except ClientDisconnect:  # nobody to answer: a line in serve.log, no traceback
            serverlog.write(_client(request), "upload: the client went away before the body ended; nothing was kept")
            return Response(status_code=400)
        files, inode = upload.into_inbox(self.h, staged)
        serverlog.write(_client(request), f"upload: {', '.join(f.name for f in files)} into {self.h.inbox}")
        found = await verdict.wait(self.h, verdict.Placed(files, inode), wait, gone=request.is_disconnected)
        if found.state == verdict.GONE:
            serverlog.write(_client(request), f"upload: the client went away before the daemon's verdict on "
                                              f"{files[-1].name} (the drop stays in the inbox)")
        elif found.state == verdict.REJECTED:
            serverlog.write(_client(request), f"upload: {files[-1].name} rejected by the daemon")
        status = {verdict.QUEUED: 201, verdict.REJECTED: 422}.get(found.state, 202)
        return Json(dataclasses.asdict(found), status)

    async def command(self, request: Request) -> Response:
        """pause, resume, stop, skip (a run, or without one the running jobs) or priority: the CLI's command,
        answered with the daemon's acknowledgement.
        ---
        summary: steer a run (pause, resume, stop, skip, priority)
        parameters: [{name: wait, in: query, schema: {type: number}, description: seconds to wait (default 3)},
                     {name: value, in: query, schema: {type: integer}, description: "priority: the new priority"}]
        """
        kind = request.path_params["kind"]
        if kind not in STEERING:
            allowed = _methods_elsewhere(request)
            if allowed:  # POST /api/status: a reading endpoint, not an unknown command
                raise HTTPException(405, headers={"Allow": ", ".join(allowed)})
            return Json({"error": f"no such command {kind!r}. Fix: one of {', '.join(STEERING)}"}, 404)
        wait = _float(request, "wait", 3.0)
        value = request.query_params.get("value", "")
        if kind == "priority" and not re.fullmatch(r"[+-]?[0-9]{1,18}", value):  # nothing else reaches the file
            raise BadRequest(f"priority value {value[:40]!r} is not an integer. Fix: POST /api/runs/RUN/priority"
                             f"?value=N, N between -{control.MAX_PRIORITY} and {control.MAX_PRIORITY} (higher first)")
        if kind == "priority":
            if "run" not in request.path_params:
                raise ControlError("priority names a run. Fix: POST /api/runs/RUN/priority?value=N")
            # the CLI's rule: a run, a sweep's group id or shared name (all its live runs), a drop still in the inbox
            with _runs_fix():
                refs = await asyncio.to_thread(prioritised, self.h, request.path_params["run"])
            content = "\n".join(f"{ref} {value}" for ref in refs)
        else:
            run = await asyncio.to_thread(self.run_of, request) if "run" in request.path_params else None
            content = run["id"] if run else ""
        if kind == "stop" and not content:
            out = await steer.stop_all(self.h, wait)
        else:
            out = await steer.send(self.h, kind, content, wait)
        return self._answered(request, out)

    async def model_command(self, request: Request) -> Response:
        """activate or delete a model version (POST …/activate, DELETE …): the CLI's command, acknowledged.
        ---
        summary: activate or delete a model version
        parameters: [{name: wait, in: query, schema: {type: number}}]
        """
        kind = "delete" if request.method == "DELETE" else "activate"
        name, version = request.path_params["name"], request.path_params["version"]
        content = await asyncio.to_thread(steer.model_version, self.h, kind, name, version)
        out = await steer.send(self.h, kind, content, _float(request, "wait", 3.0))
        return self._answered(request, out)

    def _answered(self, request: Request, out: dict[str, Any]) -> Response:
        answers = "; ".join(f"{e['status']}: {e['message']}" for e in out["answers"]) or out["note"]
        serverlog.write(_client(request), f"{out['command']} {out['content']}".rstrip() + f": {answers}")
        return Json(out, 409 if out["rejected"] else 200 if out["acknowledged"] else 202)


RUN_FIX = "Fix: GET /api/runs lists the runs; name one by its id, a unique prefix of it, or its dataset's name."


@contextmanager
def _runs_fix() -> Iterator[None]:
    """A run named that matches none or several: the reader's fix names the CLI (overnight runs); HTTP's, the API."""
    try:
        yield
    except RefError as e:
        said = str(e)
        cut = said.find("Fix:")
        raise RefError((said[:cut].rstrip() if cut >= 0 else said) + f"\n{RUN_FIX}") from None


async def _error(request: Request, exc: Exception) -> Response:
    status = {RefError: 404, BrokenDB: 503, ControlError: 400, DropError: 409, HomeDamaged: 503,
              control.NotSent: 507}.get(type(exc), 400)
    status = getattr(exc, "status", status)
    if request.method not in ("GET", "HEAD"):  # a write refused is logged as a write done
        serverlog.write(_client(request), f"{request.method} {request.url.path} refused ({status}): "
                                          f"{str(exc).splitlines()[0][:200]}")
    return Json({"error": str(exc)}, status)


def _methods_elsewhere(request: Request) -> list[str]:
    """The methods another route takes at this very path (GET for /api/status), [] when none does."""
    scope = {**request.scope, "method": "GET"}
    for route in request.app.routes:
        if isinstance(route, Route) and route.methods and route.matches(scope)[0] is Match.FULL:
            return sorted(route.methods)
    return []


def _completed(schema: dict[str, Any]) -> dict[str, Any]:
    """What the docstrings leave out of a valid OpenAPI document: each path parameter declared, and a response; only
    the API's own paths (the dashboard's page is no endpoint of it)."""
    paths = {}
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith("/api/"):
            continue
        names = re.findall(r"{(\w+)}", path)
        for op in operations.values():
            declared = {p["name"] for p in op.get("parameters", []) if p.get("in") == "path"}
            op["parameters"] = [*op.get("parameters", []), *({"name": n, "in": "path", "required": True,
                                                               "schema": {"type": "string"}}
                                                              for n in names if n not in declared)]
            op.setdefault("responses", {"200": {"description": "as the summary says (JSON unless stated)"},
                                        "4XX": {"description": '{"error": "… Fix: …"}'}})
        paths[path] = operations
    return {**schema, "paths": paths}


async def _no_route(request: Request, exc: Exception) -> Response:
    """An API path or method that does not exist: JSON with the fix, as every other API answer."""
    status, headers = getattr(exc, "status_code", 404), getattr(exc, "headers", None)  # a 405's Allow
    if not request.url.path.startswith("/api/"):
        return Response(f"{getattr(exc, 'detail', 'Not Found')}\n", status, headers, media_type="text/plain")
    what = "no such endpoint" if status == 404 else f"{request.method} is not taken here"
    return Json({"error": f"{what}: {request.method} {request.url.path}. Fix: see GET /api/openapi.json for the "
                          f"endpoints and their methods"}, status, headers=headers)


def build(h: Home, tokens: Tokens | None, stopping: Callable[[], bool] = lambda: False) -> Starlette:
    """The app; `stopping` says the server is shutting down (its open log streams then end)."""
    api = Api(h, stopping)
    dashboard = Dashboard(h)
    run = "/api/runs/{run}"
    routes = [
        Route("/", lambda request: RedirectResponse(f"{PREFIX}/"), include_in_schema=False),
        # the API's root, as `overnight serve` prints it: its schema lists every endpoint
        Route("/api/", lambda request: RedirectResponse("/api/openapi.json"), include_in_schema=False),
        Route("/api/openapi.json", api.openapi), Route("/api/status", api.status), Route("/api/runs", api.runs),
        Route(run, api.run), Route(f"{run}/metrics", api.metrics), Route(f"{run}/evolution", api.evolution),
        Route(f"{run}/log", api.log), Route(f"{run}/log/stream", api.log_stream), Route("/api/models", api.models),
        Route("/api/queue", api.queue), Route("/api/system", api.system),
        Route("/api/datasets", api.upload, methods=["POST"]),
        Route(run + "/{kind:str}", api.command, methods=["POST"]),
        Route("/api/{kind:str}", api.command, methods=["POST"]),
        Route("/api/models/{name}/{version:int}/activate", api.model_command, methods=["POST"]),
        Route("/api/models/{name}/{version:int}", api.model_command, methods=["DELETE"]),
        *dashboard.routes(),
    ]
    app = Starlette(routes=routes, exception_handlers={
        RefError: _error, BrokenDB: _error, ControlError: _error, DropError: _error, UploadError: _error,
        BadRequest: _error, HomeDamaged: _error, control.NotSent: _error, 404: _no_route, 405: _no_route})
    app.add_middleware(TokenAuth, tokens=Live(h, tokens))
    app.add_middleware(NoFraming)  # added last, so outermost: a refusal carries the headers too
    with contextlib.suppress(OSError):
        upload.clear_leftovers(h)
    return app
