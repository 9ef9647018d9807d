"""`POST /api/datasets`: a multipart upload (the dataset, and optionally its sidecar, probes and eval file) streamed to disk in a
hidden folder of the inbox, then put into the inbox exactly as `overnight add` puts a drop (daemon/core/drop.py): the
sidecar and probes first, the dataset last, nothing the daemon could see half-written. Refused before anything is
kept: a body over the cap (413), a name that is a path, hidden or not a dataset (400)."""
from __future__ import annotations

import os
import secrets
import shutil
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, BinaryIO

import psutil
from python_multipart.multipart import MultipartParser, parse_options_header

from daemon.core import drop
from daemon.core.dropfiles import EVAL_SUFFIX, PROBES_SUFFIX, role_of
from daemon.core.errors import UploadError
from daemon.core.fsutil import SHORT_NAME
from daemon.core.home import Home

PARTS = ("dataset", "sidecar", "probes", "eval")  # what `overnight add` brings along, by the same names
STAGING_PREFIX = ".overnight-upload-"  # hidden: the intake never looks at it


def too_large(limit: int) -> UploadError:
    return UploadError(413, f"the upload is larger than max_upload_mb ({limit / 2**20:g} MB); nothing was kept. "
                            f"Fix: copy the file to the box another way (scp, then overnight add), or raise "
                            f"max_upload_mb in overnight.toml.")


def dataset_name(raw: str) -> str:
    """The dataset's file name as the client sent it, refused unless it is a plain name the intake takes: no folder
    part (no `../`, no absolute path), not hidden, a dataset suffix, not too long, printable."""
    name = unicodedata.normalize("NFC", raw)
    fix = "Fix: send the file under its plain name, e.g. mydata.jsonl."
    if not name:
        raise UploadError(400, "the dataset part has no file name, and its name is the dataset's. Fix: send it with "
                               "one: curl -F dataset=@mydata.jsonl, or -F 'dataset=@FILE;filename=mydata.jsonl'.")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise UploadError(400, f"the dataset's file name {raw!r} is a path; names with a folder part (../, /) are "
                               f"refused. {fix}")
    if name.startswith("."):
        raise UploadError(400, f"the dataset's file name {raw!r} is hidden: the daemon ignores hidden files. {fix}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise UploadError(400, f"the dataset's file name {raw!r} is not UTF-8. {fix}") from None
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise UploadError(400, f"the dataset's file name {raw!r} holds control characters. {fix}")
    if len(name.encode("utf-8")) > SHORT_NAME:
        raise UploadError(400, f"the dataset's file name is too long ({len(name.encode())} bytes; at most "
                               f"{SHORT_NAME}). Fix: rename it to a shorter name.")
    if role_of(Path(name)) != "dataset":
        raise UploadError(400, f"{name!r} is not a dataset (.jsonl, .json, .csv, .parquet or .txt). Fix: send the "
                               f"dataset as the 'dataset' part, its options as 'sidecar', its probes as 'probes', its "
                               f"eval records as 'eval'.")
    return name


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    out: BinaryIO | None = None


@dataclass
class Staged:
    """The parts of one upload, on disk in a hidden folder of the inbox."""

    folder: Path
    files: dict[str, Path] = field(default_factory=dict)  # part name -> file
    filenames: dict[str, str] = field(default_factory=dict)  # part name -> the client's file name

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)  # our temporary folder only: nothing was dropped yet


class _Receiver:
    """python-multipart's callbacks: each file part written to the staging folder as it arrives."""

    def __init__(self, staged: Staged) -> None:
        self.staged = staged
        self.part = _Part()
        self.headers: dict[bytes, bytes] = {}
        self.field = b""
        self.value = b""
        self.complete = False  # the closing boundary arrived: a body cut short is never taken for a whole one

    def callbacks(self) -> dict:
        return {"on_part_begin": self.begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_done, "on_part_data": self.data, "on_part_end": self.end,
                "on_end": self.finished}

    def finished(self) -> None:
        self.complete = True

    def begin(self) -> None:
        self.part, self.headers = _Part(), {}

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def header_end(self) -> None:
        self.headers[self.field.lower()] = self.value
        self.field = self.value = b""

    def headers_done(self) -> None:
        _, params = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        if name not in PARTS:
            raise UploadError(400, f"unknown part {name!r} in the upload. Fix: send 'dataset' (and optionally "
                                   f"'sidecar', 'probes' and 'eval') as files.")
        if filename is None:
            raise UploadError(400, f"the part {name!r} is not a file. Fix: send it as a file (curl -F {name}=@FILE).")
        if name in self.staged.files:
            raise UploadError(400, f"the upload holds two {name!r} parts. Fix: send one drop per request.")
        self.part = _Part(name, filename.decode("utf-8", "surrogateescape"))
        if name == "dataset":
            dataset_name(self.part.filename)  # refused before a byte of it is written
        path = self.staged.folder / f"part-{name}"
        self.staged.files[name] = path
        self.staged.filenames[name] = self.part.filename or ""
        self.part.out = open(path, "wb")

    def data(self, data: bytes, start: int, end: int) -> None:
        if self.part.out:
            self.part.out.write(data[start:end])

    def end(self) -> None:
        if self.part.out:
            self.part.out.close()
            self.part.out = None

    def close(self) -> None:
        self.end()


async def receive(h: Home, content_type: str, body: AsyncIterator[bytes], limit: int) -> Staged:
    """Stream a multipart body into a new hidden folder of the inbox; over `limit` bytes (or not multipart), the folder
    is removed and UploadError raised."""
    ctype, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise UploadError(400, "expected a multipart/form-data body. Fix: curl -F dataset=@FILE "
                               "[-F sidecar=@FILE.toml] [-F probes=@FILE.probes.jsonl] [-F eval=@FILE.eval.jsonl] "
                               "URL/api/datasets")
    h.create()  # as the CLI does: an inbox/ removed by hand is made again (HomeDamaged, a 503, when it cannot be)
    staged = Staged(h.inbox / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(8)}")
    staged.folder.mkdir(mode=0o700)
    receiver = _Receiver(staged)
    parser = MultipartParser(boundary, receiver.callbacks())
    seen = 0
    try:
        async for chunk in body:
            seen += len(chunk)
            if seen > limit:
                raise too_large(limit)
            parser.write(chunk)
        parser.finalize()
        if not receiver.complete:
            raise UploadError(400, "the upload ended before its closing multipart boundary (the connection was cut, "
                                   "or the client sent a partial body); nothing was kept. Fix: send it again.")
    except BaseException:
        receiver.close()
        staged.discard()
        raise
    receiver.close()
    return staged


def into_inbox(h: Home, staged: Staged) -> tuple[list[Path], int]:
    """Give the staged parts their drop names (NAME.EXT, NAME.toml, NAME.probes.jsonl, NAME.eval.jsonl) and put them
    into the inbox as `overnight add` does (it takes the eval file from beside the dataset); the staging folder is
    removed whatever happens. Returns the inbox paths (the dataset last) and the dataset's inode, taken before the
    daemon can move it."""
    try:
        if "dataset" not in staged.files:
            raise UploadError(400, "the upload has no 'dataset' part. Fix: curl -F dataset=@FILE URL/api/datasets")
        name = dataset_name(staged.filenames["dataset"])
        stem = Path(name).stem
        named = {"dataset": name, "sidecar": f"{stem}.toml", "probes": f"{stem}{PROBES_SUFFIX}",
                 "eval": f"{stem}{EVAL_SUFFIX}"}
        paths = {}
        for part, path in staged.files.items():
            paths[part] = path.rename(staged.folder / named[part])
        inode = paths["dataset"].stat().st_ino  # linked in as it is: the same inode wherever the daemon moves it
        return drop.add(h, paths["dataset"], paths.get("sidecar"), paths.get("probes"), staged=True), inode
    finally:
        staged.discard()


def clear_leftovers(h: Home) -> None:
    """Staging folders a killed server left behind (its own temporary files, never a drop); those of a server still
    running (two may serve one home) are its uploads in progress."""
    for p in h.inbox.glob(f"{STAGING_PREFIX}*"):
        if _server_alive(p):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def _server_alive(folder: Path) -> bool:
    """Whether the server that made `folder` still runs: its pid (in the name) names a process other than this one
    that started before the folder was made (a pid reused since, a container's pid 1 again, is not that server)."""
    pid = folder.name[len(STAGING_PREFIX):].partition("-")[0]
    try:
        proc = psutil.Process(int(pid))
        return proc.pid != os.getpid() and proc.create_time() <= folder.stat().st_mtime + 1
    except (ValueError, OverflowError, OSError, psutil.Error):
        return False
