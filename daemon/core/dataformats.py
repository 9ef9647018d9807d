"""Streaming readers for the dataset file formats, and the error type they share with `datasets.py`.

Every reader yields `(location, record)` pairs one at a time and keeps memory flat whatever the file size:
JSONL, CSV and .txt are read line by line, a .json array is decoded one element at a time from a bounded
buffer, parquet batch by batch. A single record may not exceed `MAX_RECORD_BYTES`, so even a file with
no line breaks at all cannot make a reader hold more than that.

Locations are what a user can find in an editor: "line 12" (JSONL, txt), "record 5 (line 12)" (.json),
"row 7" (CSV, the header being row 1), "record 5" (parquet). All numbers are 1-based.
"""
from __future__ import annotations

import csv
import json
import re
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import IO, Any
from daemon.core.errors import DatasetError

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")

# One record (a JSONL line, a .json element, a CSV row) may be this large; beyond it we stop with an
# error rather than buffer an unbounded amount of a file that has no record boundaries.
MAX_RECORD_BYTES = 64 * 1024 * 1024
CHUNK_BYTES = 256 * 1024
SNIFF_BYTES = 64 * 1024

def iconv_fix(name: str, encoding: str) -> str:
    """The fix for a file in another encoding: a converted copy that keeps a dataset's suffix (drop that one)."""
    p = Path(name)
    return f"convert it to UTF-8, e.g. `iconv -f {encoding} -t utf-8 {p.name} > {p.stem}.utf8{p.suffix}`"

# Leading bytes of files that are certainly not text, with what they most likely are.
_MAGIC = (
    (b"PAR1", "a parquet file", "give it the .parquet suffix"),
    (b"PK\x03\x04", "a zip archive", "unzip it and drop the dataset file itself"),
    (b"\x1f\x8b", "a gzip-compressed file", "decompress it (gunzip) and drop the result"),
    (b"(\xb5/\xfd", "a zstd-compressed file", "decompress it (zstd -d) and drop the result"),
    (b"BZh", "a bzip2-compressed file", "decompress it (bunzip2) and drop the result"),
    (b"\xfd7zXZ", "an xz-compressed file", "decompress it (unxz) and drop the result"),
)
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_UTF8_BOM = b"\xef\xbb\xbf"


# Python's messages for the commonest JSON mistakes end mid-sentence ("... starting at"); say them whole.
_JSON_PROBLEMS = {
    "Invalid control character at": "a raw tab or line break inside a string (write it as \\t or \\n)",
    "Unterminated string starting at": "a string is never closed (a missing \")",
    "Expecting property name enclosed in double quotes": "expected a key in double quotes (single quotes, or a "
                                                         "trailing comma?)",
}


def json_problem(err: json.JSONDecodeError) -> str:
    """A JSON decode error as a readable phrase."""
    return _JSON_PROBLEMS.get(err.msg, err.msg)


def line_column(err: json.JSONDecodeError, line: str) -> int:
    """The column of a JSON error in one line of a JSONL file: a cut-short object ends at the line's own newline,
    which the parser counts as column 1 of a line 2."""
    return err.colno if err.lineno == 1 else len(line.split("\n", 1)[0].rstrip("\r")) + 1


def too_deep(name: str, location: str | None, field: str | None = None) -> DatasetError:
    """Python's JSON parser recurses: arrays or objects nested about a thousand deep raise RecursionError."""
    return DatasetError(name, location, field, "the JSON is nested too deeply to read (hundreds of arrays or "
                        "objects inside each other)", "records hold flat fields: strings, and for chat one list of "
                        "message objects; remove the nesting")


_SURROGATE = re.compile("[\ud800-\udfff]")


def surrogate_problem(record: Any) -> tuple[str | None, str] | None:
    """A lone UTF-16 surrogate anywhere in `record` (a key or a string, at any depth): (the field it is in, e.g.
    "messages[1].content" — None at the top —, the message's problem sentence); None when there is none.

    JSON lets an escape such as \\ud800 without its other half through (`json.loads` returns it), but such a
    string is not Unicode text: it cannot be encoded as UTF-8, so a tokenizer, a log or a report fails on it later.
    Paired escapes (\\ud83d\\ude00) are decoded to their character and never reach here."""
    stack: list[tuple[Any, str | None]] = [(record, None)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if value.isascii():
                continue
            found = _SURROGATE.search(value)
            if found:
                return where, _surrogate_sentence(found.group(), found.start(), len(value))
        elif isinstance(value, dict):
            for key, item in value.items():
                name = key if where is None else f"{where}.{key}"
                found = None if not isinstance(key, str) or key.isascii() else _SURROGATE.search(key)
                if found:
                    shown = key.encode("ascii", "backslashreplace").decode("ascii")
                    return where, (f"the field name '{shown}' holds an unpaired UTF-16 surrogate "
                                   f"U+{ord(found.group()):04X} (written {_escaped(found.group())} in the JSON), "
                                   f"which is not Unicode text")
                stack.append((item, name))
        elif isinstance(value, (list, tuple)):
            base = where or ""
            stack.extend((item, f"{base}[{i}]") for i, item in reversed(list(enumerate(value))))
    return None


def _escaped(char: str) -> str:
    return f"\\u{ord(char):04x}"


def _surrogate_sentence(char: str, index: int, length: int) -> str:
    at = f" at character {index + 1}" if length > 1 else ""
    return (f"the text holds an unpaired UTF-16 surrogate U+{ord(char):04X}{at} (written {_escaped(char)} in the "
            f"JSON, without the other half of its pair), which is not Unicode text")


SURROGATE_FIX = ("remove the escape, or write the full surrogate pair (a high \\ud800-\\udbff escape followed by a "
                 "low \\udc00-\\udfff one, e.g. \\ud83d\\ude00 for 😀), or write the character itself in UTF-8")


def refuse_surrogates(record: Any, name: str, location: str | None) -> None:
    """A DatasetError naming the file, the place, the field and the fix when `record` holds a lone surrogate."""
    found = surrogate_problem(record)
    if found is not None:
        field, problem = found
        raise DatasetError(name, location, field, problem, SURROGATE_FIX)


class Notes:
    """Remarks collected while reading (accepted oddities), rendered for the report in first-seen order.

    `add` records a remark once; `tally` counts occurrences of a template holding `{n}`.
    """

    def __init__(self) -> None:
        self._items: dict[str, int | None] = {}

    def add(self, text: str) -> None:
        """Record `text` once."""
        self._items.setdefault(text, None)

    def tally(self, template: str, n: int = 1) -> None:
        """Count one more occurrence of `template` (which contains `{n}`)."""
        self._items[template] = (self._items.get(template) or 0) + n

    def render(self) -> list[str]:
        """The remarks as sentences."""
        return [text if n is None else text.format(n=n) for text, n in self._items.items()]


def detect_format(path: str | Path) -> str:
    """The dataset format named by the file's suffix: "jsonl", "json", "csv", "parquet" or "txt"."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        got = f"suffix '{path.suffix}'" if path.suffix else "no suffix"
        raise DatasetError(
            path.name, None, None,
            f"unsupported file type ({got}); supported: {', '.join(SUPPORTED_SUFFIXES)}",
            "save the dataset in one of the supported formats and give it the matching suffix",
        )
    return suffix[1:]


def describe(value: Any) -> str:
    """A short phrase naming a JSON value's type, for messages ("a string", "a number (5)")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def read_records(path: Path, fmt: str, notes: Notes) -> Iterator[tuple[str, Any]]:
    """Stream `(location, record)` pairs from `path` in format `fmt`; raises DatasetError on bad input.

    Records of JSONL/.json/CSV/parquet are dicts (checked here); .txt yields `{"text": line}` per non-blank line.
    """
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise DatasetError(path.name, None, None, f"the path {problem}", "give the path of a dataset file")
    _sniff(path)
    readers = {"jsonl": _read_jsonl, "json": _read_json_array, "csv": _read_csv,
               "parquet": _read_parquet, "txt": _read_txt}
    return readers[fmt](path, notes)


def _sniff(path: Path) -> None:
    """Reject empty, whitespace-only and obviously binary files before any parsing."""
    with path.open("rb") as f:
        head = f.read(SNIFF_BYTES)
        more = bool(f.read(1))
    name = path.name
    if not head:
        raise DatasetError(name, None, None, "the file is empty (0 bytes)",
                           "check that the copy finished and the file holds the dataset")
    if path.suffix.lower() == ".parquet":
        return
    if head.startswith(_UTF16_BOMS):
        raise DatasetError(name, None, None, "the file is UTF-16 encoded (it starts with a UTF-16 byte-order mark)",
                           iconv_fix(name, "utf-16"))
    for magic, what, fix in _MAGIC:
        if head.startswith(magic):
            raise DatasetError(name, None, None, f"this looks binary: the file is {what}, not text", fix)
    if not more and not head.removeprefix(_UTF8_BOM).strip():
        raise DatasetError(name, None, None, "the file contains only whitespace, no records",
                           "check that the copy finished and the file holds the dataset")


def _binary_error(name: str, line: int, offset: int) -> DatasetError:
    return DatasetError(
        name, f"line {line}", None,
        f"this looks binary: NUL byte at byte offset {offset}",
        "drop a text dataset (JSONL, JSON, CSV, txt) or a parquet file; a UTF-16 file must be converted to UTF-8 "
        "first (`iconv -f utf-16 -t utf-8`)",
    )


def _encoding_error(name: str, line: int, offset: int, err: UnicodeDecodeError) -> DatasetError:
    bad = err.object[err.start:err.start + 4].hex(" ")
    return DatasetError(name, f"line {line}", None,
                        f"the file is not valid UTF-8: byte 0x{bad[:2]} at byte offset {offset} "
                        f"(bytes {bad} …)", iconv_fix(name, "latin1") + " (use the file's real encoding)")


def iter_lines(path: Path, notes: Notes) -> Iterator[tuple[int, str]]:
    """Yield `(line_number, text)` for every line, its terminator kept, decoded strictly as UTF-8.

    Accepts (and notes) a UTF-8 BOM and CRLF endings; raises on NUL bytes, invalid UTF-8 and lines
    longer than MAX_RECORD_BYTES.
    """
    name = path.name
    offset = 0
    with path.open("rb") as f:
        for number, raw in enumerate(iter(lambda: f.readline(MAX_RECORD_BYTES + 1), b""), start=1):
            if len(raw) > MAX_RECORD_BYTES and not raw.endswith(b"\n"):
                raise DatasetError(name, f"line {number}", None,
                                   f"the line is longer than {MAX_RECORD_BYTES // 2**20} MiB",
                                   "split it into smaller records (one record per line)")
            if number == 1 and raw.startswith(_UTF8_BOM):
                notes.add("UTF-8 BOM accepted")
                raw = raw[len(_UTF8_BOM):]
                offset += len(_UTF8_BOM)
            nul = raw.find(b"\x00")
            if nul >= 0:
                raise _binary_error(name, number, offset + nul)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _encoding_error(name, number, offset + err.start, err) from None
            if raw.endswith(b"\r\n"):
                notes.add("CRLF line endings accepted")
            offset += len(raw)
            yield number, text


def _read_txt(path: Path, notes: Notes) -> Iterator[tuple[str, Any]]:
    """Plain text: one record per non-blank line."""
    count = 0
    for number, text in iter_lines(path, notes):
        text = text.rstrip("\r\n")
        if not text.strip():
            notes.tally("{n} blank line(s) skipped")
            continue
        count += 1
        yield f"line {number}", {"text": text}
    if count == 0:
        raise DatasetError(path.name, None, None, "the file has no non-blank lines", "put one text per line")


def _read_jsonl(path: Path, notes: Notes) -> Iterator[tuple[str, Any]]:
    """JSON Lines: one object per line; blank lines are skipped."""
    name = path.name
    count = 0
    for number, text in iter_lines(path, notes):
        if not text.strip():
            notes.tally("{n} blank line(s) skipped")
            continue
        location = f"line {number}"
        try:
            record = json.loads(text)
        except RecursionError:
            raise too_deep(name, location) from None
        except json.JSONDecodeError as err:
            if count == 0 and text.lstrip().startswith("["):
                raise DatasetError(name, location, None,
                                   "this looks like a JSON array, not JSON Lines (one object per line)",
                                   "rename the file to .json, or write one JSON object per line") from None
            raise DatasetError(name, location, None, f"malformed JSON: {json_problem(err)} (column "
                               f"{line_column(err, text)})",
                               "each line must hold one complete JSON object; check quotes, commas and "
                               "brackets on that line") from None
        if not isinstance(record, dict):
            fix = "write one JSON object ({...}) per line"
            if count == 0 and isinstance(record, list):
                fix = "this looks like a JSON array: rename the file to .json, or " + fix
            raise DatasetError(name, location, None, f"the line holds {describe(record)}, expected a JSON object",
                               fix)
        count += 1
        yield location, record
    if count == 0:
        raise DatasetError(name, None, None, "the file has no records (only blank lines)",
                           "write one JSON object per line")


# A header is recognised when it holds the fields of one schema; these are listed in the error otherwise.
CSV_HEADERS = (("text",), ("prompt", "completion"), ("instruction", "input", "output"), ("messages",),
               ("conversations",), ("prompt", "chosen", "rejected"), ("instruction", "input", "chosen", "rejected"))
_CSV_FIELDS = frozenset({c for cols in CSV_HEADERS for c in cols} | {"system", "history", "tools", "label"})

# Field names of other conventions, and the accepted field to rename each to.
FIELD_HINTS = {"question": "prompt", "answer": "completion", "query": "instruction", "response": "output",
               "content": "text", "conversation": "conversations", "dialog": "messages", "chat": "messages",
               "turns": "messages", "input": "instruction"}


def rename_hint(keys: Iterable[str], fields: Collection[str], noun: str = "keys") -> str:
    """The renames that would make `keys` accepted `fields`, as the start of a fix: "rename 'question' to 'prompt'",
    "keys are lower-case: rename 'Prompt' to 'prompt'"; "" when there are none."""
    renames, case = [], False
    for key in keys:
        if key in FIELD_HINTS:
            renames.append(f"'{key}' to '{FIELD_HINTS[key]}'")
        elif key not in fields and key.lower() in fields:
            renames.append(f"'{key}' to '{key.lower()}'")
            case = True
        elif key not in fields and key.lower() in FIELD_HINTS:
            renames.append(f"'{key}' to '{FIELD_HINTS[key.lower()]}'")
    if not renames:
        return ""
    return f"{noun} are lower-case: " * case + f"rename {', '.join(renames)}"


# Columns whose cells hold JSON (a list of messages, history pairs, tool definitions).
_CSV_JSON_COLUMNS = ("messages", "conversations", "history")


def _read_csv(path: Path, notes: Notes) -> Iterator[tuple[str, Any]]:
    """CSV with a header row naming the fields; cells of list-valued fields hold JSON."""
    name = path.name
    limit = max(csv.field_size_limit(), MAX_RECORD_BYTES)
    csv.field_size_limit(limit)  # the default (128 KiB) would reject long texts that JSONL accepts
    lines = (text for _, text in iter_lines(path, notes))
    reader = csv.reader(lines, strict=True)  # strict: an unclosed quote is an error, not a swallowed file
    header: list[str] | None = None
    count = 0
    while True:
        start_line = reader.line_num + 1
        try:
            row = next(reader, None)
        except csv.Error as err:
            raise DatasetError(name, _row_location(1 if header is None else count + 2, start_line), None,
                               f"malformed CSV: {err}",
                               "check the quoting: a field containing quotes or line breaks must be quoted, "
                               "with inner quotes doubled (\"\")") from None
        if row is None:
            break
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = _csv_header(name, row, start_line)
            continue
        count += 1
        number = count + 1  # the header is row 1, as in a spreadsheet
        location = _row_location(number, start_line)
        if len(row) != len(header):
            raise DatasetError(name, location, None,
                               f"row {number} has {len(row)} fields, the header has {len(header)}",
                               "quote fields that contain commas (\"like, this\") and give every row one value "
                               "per header column")
        yield location, _csv_record(name, location, dict(zip(header, row)))
    if header is None:
        raise DatasetError(name, None, None, "the file has no rows", "write a header row and the records")
    if count == 0:
        raise DatasetError(name, None, None, "the file has a header but no data rows",
                           "add the records below the header")


def _row_location(number: int, line: int) -> str:
    """ "row N", with the line where the row starts when the two differ (multi-line cells, blank lines)."""
    return f"row {number}" if number == line else f"row {number} (line {line})"


def _csv_header(name: str, row: list[str], line: int) -> list[str]:
    header = [cell.strip() for cell in row]
    duplicates = sorted({cell for cell in header if header.count(cell) > 1})
    if duplicates:
        raise DatasetError(name, _row_location(1, line), None, f"duplicate header column(s): {', '.join(duplicates)}",
                           "give every column its own name")
    if not any(all(col in header for col in cols if col != "input") for cols in CSV_HEADERS):
        accepted = "; ".join(",".join(cols) for cols in CSV_HEADERS)
        problem = f"no recognised header: the first row is {','.join(header)[:200]!r}"
        if len(header) == 1 and any(sep in header[0] for sep in ";\t|"):
            problem += " (is the file separated by something other than commas?)"
        hint = rename_hint(header, _CSV_FIELDS, "column names")
        raise DatasetError(name, _row_location(1, line), None, problem,
                           (f"{hint}, or " if hint else "") + f"start the file with a header row naming the fields, "
                           f"one of: {accepted} ('input' is optional); values separated by commas")
    return header


_CSV_BOOLS = {"true": True, "false": False}  # a KTO 'label' cell: CSV has no booleans, so the words stand for them


def _csv_record(name: str, location: str, record: dict[str, Any]) -> dict[str, Any]:
    label = record.get("label")
    if isinstance(label, str) and label.strip().lower() in _CSV_BOOLS:
        record["label"] = _CSV_BOOLS[label.strip().lower()]
    for column in _CSV_JSON_COLUMNS:
        cell = record.get(column)
        if isinstance(cell, str) and cell.strip():
            try:
                record[column] = json.loads(cell)
            except RecursionError:
                raise too_deep(name, location, column) from None
            except json.JSONDecodeError as err:
                raise DatasetError(name, location, column, f"the cell must hold JSON (a list), but: {json_problem(err)}",
                                   f"write the {column} list as JSON inside the (quoted) cell") from None
    return record


def _read_parquet(path: Path, notes: Notes) -> Iterator[tuple[str, Any]]:
    """Parquet, batch by batch."""
    import pyarrow as pa  # noqa: PLC0415  (imported only when a parquet file is read: the daemon starts fast)
    import pyarrow.parquet as pq  # noqa: PLC0415

    name = path.name
    fix = "the file is truncated or corrupt: copy it again completely, or re-export it (e.g. pandas.to_parquet)"
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DatasetError(name, None, None, f"not a readable parquet file ({err})", fix) from None
    with parquet:
        if parquet.metadata.num_rows == 0:
            raise DatasetError(name, None, None, "the parquet file has no rows", "write the records into the file")
        index = 0
        batches = parquet.iter_batches(batch_size=256)
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as err:
                raise DatasetError(name, f"record {index + 1}", None,
                                   f"cannot read the parquet data from here on ({err})", fix) from None
            if batch is None:
                return
            for row in batch.to_pylist():
                index += 1
                yield f"record {index}", row


def _read_json_array(path: Path, notes: Notes) -> Iterator[tuple[str, Any]]:
    """A .json file holding one array of objects, decoded element by element."""
    with path.open("rb") as f:
        yield from _JsonArrayReader(f, path.name, notes).records()


_WS = re.compile(r"[ \t\n\r]*")


class _JsonArrayReader:
    """Incremental decoder for `[ {...}, {...} ]` that never holds more than a chunk plus one record.

    `buf[pos:]` is decoded text not yet consumed; `line` is the line number at `pos`.
    """

    def __init__(self, f: IO[bytes], name: str, notes: Notes) -> None:
        self.f, self.name, self.notes = f, name, notes
        self.buf, self.pos, self.line = "", 0, 1
        self.column0 = 0  # characters between the last line break and buf[0]
        self.eof = False
        self.carry = b""  # an incomplete UTF-8 sequence at the end of the last chunk
        self.offset = 0  # bytes read so far
        self.decoder = json.JSONDecoder()

    # -- buffer ------------------------------------------------------------------------------------------
    def _fill(self, size: int = 0) -> None:
        """Append about `size` (default: one chunk) more bytes of decoded text to the buffer, or set `eof`."""
        if self.pos:  # drop consumed text so the buffer stays about one chunk long
            newline = self.buf.rfind("\n", 0, self.pos)
            self.column0 = self.pos - newline - 1 if newline >= 0 else self.column0 + self.pos
            self.buf, self.pos = self.buf[self.pos:], 0
        raw = self.f.read(size or CHUNK_BYTES)
        first = self.offset == 0
        start_offset = self.offset - len(self.carry)
        self.offset += len(raw)
        if not raw:
            self.eof = True
            if self.carry:
                self._decode(self.carry, start_offset, final=True)
            return
        data = self.carry + raw if self.carry else raw
        if first and data.startswith(_UTF8_BOM):
            self.notes.add("UTF-8 BOM accepted")
            data, start_offset = data[len(_UTF8_BOM):], start_offset + len(_UTF8_BOM)
        self.buf += self._decode(data, start_offset, final=False)

    def _decode(self, data: bytes, start_offset: int, final: bool) -> str:
        nul = data.find(b"\x00")
        if nul >= 0:
            raise _binary_error(self.name, self._line_of(data, nul), start_offset + nul)
        try:
            text, self.carry = data.decode("utf-8"), b""
        except UnicodeDecodeError as err:
            if final or err.reason != "unexpected end of data" or err.start < len(data) - 3:
                line = self._line_of(data, err.start)
                raise _encoding_error(self.name, line, start_offset + err.start, err) from None
            # the chunk ends inside a multi-byte character: keep its first bytes for the next chunk
            text, self.carry = data[:err.start].decode("utf-8"), data[err.start:]
        if "\r\n" in text:
            self.notes.add("CRLF line endings accepted")
        return text

    def _line_of(self, data: bytes, index: int) -> int:
        """Line number of byte `index` of `data`, which follows the whole buffer."""
        return self.line + self.buf.count("\n", self.pos) + data.count(b"\n", 0, index)

    def _advance(self, end: int) -> None:
        self.line += self.buf.count("\n", self.pos, end)
        self.pos = end

    def _skip_ws(self) -> str:
        """Skip whitespace (reading on as needed); the next character, or "" at the end of the file."""
        while True:
            self._advance(_WS.match(self.buf, self.pos).end())
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if self.eof:
                return ""
            self._fill()

    def _value(self, index: int) -> Any:
        """Decode the JSON value at `pos` and move past it; `index` is the record number for messages."""
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except RecursionError:
                raise too_deep(self.name, f"record {index} (line {self.line})" if index else f"line {self.line}"
                                ) from None
            except json.JSONDecodeError as err:
                pending = len(self.buf) - self.pos
                if self.eof or self._definitive(err):
                    raise self._malformed(index, err) from None
                if pending > MAX_RECORD_BYTES:
                    raise DatasetError(self.name, f"record {index} (line {self.line})", None,
                                       f"the record is larger than {MAX_RECORD_BYTES // 2**20} MiB, or malformed "
                                       f"({json_problem(err)})", "check the JSON there, and split very large records"
                                       ) from None
                self._fill(max(CHUNK_BYTES, pending))  # doubling keeps re-decoding a huge record linear
                continue
            if end == len(self.buf) and not self.eof:  # a number may continue in the next chunk
                self._fill()
                continue
            self._refuse_oversized(index, end)
            self._advance(end)
            return value

    def _refuse_oversized(self, index: int, end: int) -> None:
        """The per-record limit for a record that decoded: the buffer doubles while a record is incomplete, so a
        record a little over the limit is read whole without the check on a decode error ever seeing it."""
        if self._over_limit(self.pos, end):
            raise DatasetError(self.name, f"record {index} (line {self.line})" if index else f"line {self.line}",
                               None, f"the record is larger than {MAX_RECORD_BYTES // 2**20} MiB",
                               "split it into smaller records")

    def _over_limit(self, start: int, end: int) -> bool:
        """Whether `buf[start:end]` is over MAX_RECORD_BYTES in UTF-8, measured a chunk at a time (memory stays
        flat); a character is 1 to 4 bytes, so a stretch under a quarter of the limit is not measured at all."""
        if (end - start) * 4 <= MAX_RECORD_BYTES:
            return False
        size = sum(len(self.buf[i:min(i + CHUNK_BYTES, end)].encode("utf-8")) for i in range(start, end, CHUNK_BYTES))
        return size > MAX_RECORD_BYTES

    def _definitive(self, err: json.JSONDecodeError) -> bool:
        """Whether a decode error is real rather than caused by the buffer ending mid-record."""
        return err.pos < len(self.buf) - 64 and not err.msg.startswith("Unterminated string")

    def _malformed(self, index: int, err: json.JSONDecodeError) -> DatasetError:
        line = self.line + self.buf.count("\n", self.pos, err.pos)
        newline = self.buf.rfind("\n", 0, err.pos)
        column = err.pos - newline if newline >= 0 else self.column0 + err.pos + 1
        where = f"record {index} (line {line})" if index else f"line {line}"
        if self.eof and (err.pos >= len(self.buf) or err.msg.startswith("Unterminated string")):
            return DatasetError(self.name, where, None,
                                f"the file ends in the middle of a record (truncated?): {json_problem(err)}",
                                "copy the file again completely, or close the last record and the array")
        return DatasetError(self.name, where, None, f"malformed JSON: {json_problem(err)} (line {line}, column {column})",
                            "fix the JSON syntax there: check quotes, commas and brackets")

    def _error(self, problem: str, fix: str) -> DatasetError:
        return DatasetError(self.name, f"line {self.line}", None, problem, fix)

    # -- structure ---------------------------------------------------------------------------------------
    def records(self) -> Iterator[tuple[str, Any]]:
        """Yield `(location, record)` for every element of the top-level array."""
        self._fill()
        first = self._skip_ws()
        if not first:
            raise DatasetError(self.name, None, None, "the file contains only whitespace, no records",
                               "check that the copy finished and the file holds the dataset")
        if first == "{":
            raise self._top_level_object()
        if first != "[":
            raise self._error(f"a .json dataset must be an array of records, but the file starts with {first!r}",
                              "write the records as [ {...}, {...} ], or use .jsonl for one object per line")
        self._advance(self.pos + 1)
        index = 0
        while True:
            char = self._skip_ws()
            if char == "]":
                break
            if index:
                if char != ",":
                    raise self._error(f"expected ',' or ']' after record {index}, found {char!r}" if char else
                                      "the file ends before the array is closed with ']' (truncated?)",
                                      "separate records with commas and close the array with ']'")
                self._advance(self.pos + 1)
                char = self._skip_ws()
                if char == "]":
                    raise self._error(f"trailing comma after the last record ({index})",
                                      "remove the comma before the closing ']'")
            if not char:
                raise self._error("the file ends before the array is closed with ']' (truncated?)",
                                  "copy the file again completely, or close the array with ']'")
            index += 1
            line = self.line
            record = self._value(index)
            if not isinstance(record, dict):
                raise DatasetError(self.name, f"record {index} (line {line})", None,
                                   f"the record is {describe(record)}, expected an object",
                                   "make every element of the array a JSON object such as {\"text\": \"...\"}")
            yield f"record {index} (line {line})", record
        self._advance(self.pos + 1)
        if self._skip_ws():
            raise self._error("unexpected content after the closing ']' of the array",
                              "keep a single array in the file (merge the arrays, or use .jsonl)")
        if index == 0:
            raise DatasetError(self.name, None, None, "the array is empty: no records",
                               "put the records into the array")

    def _top_level_object(self) -> DatasetError:
        """The error for a file holding an object (or several: JSON Lines named .json) at the top."""
        fix = "write the records as an array: [ {...}, {...} ]"
        try:
            value = self._value(0)
        except DatasetError:
            return self._error("a .json dataset must be an array of records, but the file holds an object", fix)
        if self._skip_ws() == "{":
            return DatasetError(self.name, None, None,
                                "the file holds several JSON objects one after another, not an array: "
                                "this looks like JSON Lines",
                                "rename the file to .jsonl (one object per line), or wrap the records in [ ]")
        keys = ", ".join(repr(k) for k in list(value)[:8])
        lists = [k for k, v in value.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
        if lists:
            fix = f"the records seem to be under {lists[0]!r}: save that array alone as the file's content"
        else:
            fix += " (a single record also needs the [ ])"
        return DatasetError(self.name, "line 1", None,
                            f"a .json dataset must be an array of records, but the file holds one object "
                            f"(keys: {keys})", fix)
