"""An eval file: the records a version is scored on at the end of its run (no torch).

`NAME.eval.jsonl` dropped beside the dataset (intake moves it into the run folder, as it moves NAME.probes.jsonl),
or `eval_file` in overnight.toml for every run. A record is a prompt and the reference answer — `{"prompt",
"reference"}`, or any supervised dataset record with an answer (prompt/completion, alpaca, messages ending with an
assistant turn) — read exactly as probe records are (daemon/core/probes.py). Unlike probes, an eval file is asked
once per run, so it may be long.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from daemon.core.dropfiles import EVAL_SUFFIX
from daemon.core.errors import DatasetError
from daemon.core.probes import EVAL_FIX, line_record, parse_record

MAX_EVAL_RECORDS = 2000  # each is answered three times (version, parent, base) at the end, within the stall window


def load_eval_file(path: Path) -> list[dict[str, Any]]:
    """Validate and load an eval file; records numbered 0.. in file order (probe dicts: prompt, reference,
    messages, tools). A DatasetError names the file, the line, the field and the fix: not JSONL, not UTF-8, empty,
    a malformed line, a record without a reference answer, a preference record, more than MAX_EVAL_RECORDS."""
    path = Path(path)
    file = str(path)
    if not path.name.endswith(".jsonl"):
        raise DatasetError(file, None, None, "an eval file must be JSON Lines",
                           f"name it NAME{EVAL_SUFFIX} with one JSON object per line")
    try:
        handle = open(path, "rb")
    except OSError as e:
        raise DatasetError(file, None, None, f"cannot be read ({e.strerror or e})",
                           "check the path (eval_file in overnight.toml is relative to the home) and its "
                           "permissions") from None
    records: list[dict[str, Any]] = []
    with handle:
        for number, raw in enumerate(handle, 1):
            location = f"line {number}"
            record = line_record(raw, file, location)
            if record is None:
                continue
            probe = parse_record(record, file, location, as_="eval")
            if probe.get("kind") is not None:
                raise DatasetError(file, location, None, "a preference record (chosen/rejected or a labelled "
                                   "completion) has no single reference answer to score", EVAL_FIX)
            probe["id"] = len(records)
            records.append(probe)
            if len(records) > MAX_EVAL_RECORDS:
                raise DatasetError(file, location, None, f"more than {MAX_EVAL_RECORDS} records",
                                   f"keep at most {MAX_EVAL_RECORDS}: each one is answered by the new version, its "
                                   f"parent and the base at the end of every run")
    if not records:
        raise DatasetError(file, None, None, "the eval file is empty (no records)", EVAL_FIX)
    return records


def owner_eval_file(value: str | None, home: Path) -> Path | None:
    """The `eval_file` option as a path: relative to the home (None when unset)."""
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(home) / path
