"""What each file of a drop is, by its name: the dataset, its sidecar (NAME.toml), its probes
(NAME.probes.jsonl) or its eval file (NAME.eval.jsonl). Shared by the intake, `overnight check`, `overnight add` and the HTTP upload."""
from __future__ import annotations

import re
from pathlib import Path

from daemon.core.datasets import SUPPORTED_SUFFIXES
from daemon.core.fsutil import SHORT_NAME, breaks_lines, short_name, shown_name

PROBES_SUFFIX = ".probes.jsonl"
EVAL_SUFFIX = ".eval.jsonl"  # scored at the end of each run (daemon/core/evalfile.py)


def stem_of(path: Path) -> str:
    """The dataset name a file belongs to: `x.probes.jsonl`, `x.eval.jsonl` and `x.toml` all belong to `x`."""
    name = path.name
    for suffix in (PROBES_SUFFIX, EVAL_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def role_of(path: Path) -> str:
    """'probes', 'eval', 'sidecar', 'dataset' or 'unsupported'."""
    if path.name.endswith(PROBES_SUFFIX):
        return "probes"
    if path.name.endswith(EVAL_SUFFIX):
        return "eval"
    if path.suffix.lower() == ".toml":
        return "sidecar"
    if path.suffix.lower() in SUPPORTED_SUFFIXES:
        return "dataset"
    return "unsupported"


# A probe or eval file's name gone slightly wrong (x.probe.jsonl, x_probes.jsonl, x.probes.json, x-eval.jsonl): it
# ends in a dataset's suffix, so without this it would be read as a dataset and fail on its schema, or train alone.
_NEAR_MISS = re.compile(r"(?P<stem>.+?)[._ -](?P<kind>probes?|evals?)\.[^.]+", re.IGNORECASE)


def near_miss(name: str) -> str | None:
    """The probe or eval file name (NAME.probes.jsonl, NAME.eval.jsonl) that a dataset-looking `name` most likely
    meant; None for any other name."""
    found = _NEAR_MISS.fullmatch(name)
    if found is None or role_of(Path(name)) != "dataset":
        return None
    return found["stem"] + (PROBES_SUFFIX if found["kind"].lower().startswith("probe") else EVAL_SUFFIX)


def _near_miss_problem(name: str, meant: str) -> str:
    suffix = PROBES_SUFFIX if meant.endswith(PROBES_SUFFIX) else EVAL_SUFFIX
    what = "a probe file" if suffix == PROBES_SUFFIX else "an eval file"
    stem = meant[: -len(suffix)]
    # a .json array or a CSV is no JSON Lines file: renaming alone would not make it readable
    convert = "" if name.lower().endswith(".jsonl") else " (it must be JSON Lines, one record per line: convert it)"
    return (f"{name}: the name looks like {what}'s, but {what} is named NAME{suffix}, so this would be taken as a "
            f"dataset of its own. Fix: did you mean {meant}? Rename it to that{convert} and drop it with the dataset "
            f"{stem}; if it is a dataset to train on, give it a name that does not end in {name[len(stem):]!r}.")


def sidecar_beside(dataset: Path) -> Path | None:
    """The sidecar beside a dataset, NAME.toml (or NAME.TOML: the intake takes either)."""
    stem = stem_of(dataset)
    exact = dataset.with_name(stem + ".toml")
    if exact.exists():
        return exact
    try:
        return next((p for p in dataset.parent.iterdir() if p.name.lower() == exact.name.lower() and p.is_file()
                     and stem_of(p) == stem), None)
    except OSError:
        return None


def companion_hint(path: Path) -> str | None:
    """A sidecar, probe or eval file named for a dataset NAME.jsonl (`NAME.jsonl.toml`): it goes with a dataset
    `NAME.jsonl.jsonl`, never with NAME.jsonl; the name it needs. None for any other file."""
    role, stem = role_of(path), stem_of(path)
    dataset = Path(stem)
    if role not in ("sidecar", "probes", "eval") or dataset.suffix.lower() not in SUPPORTED_SUFFIXES:
        return None
    ending = {"sidecar": ".toml", "probes": PROBES_SUFFIX, "eval": EVAL_SUFFIX}[role]
    return (f"{path.name} goes with a dataset named {stem}.jsonl (or .json, .csv, .parquet, .txt), not with {stem}: "
            f"for {stem}, name it {dataset.stem}{ending}")


def dataset_waiting(inbox: Path, name: str) -> bool:
    """Whether a dataset named `name` waits in the inbox (being written, settling or checked)."""
    return dataset_named(inbox, name) is not None


def dataset_named(folder: Path, stem: str) -> Path | None:
    """The dataset file of that stem in `folder` (the one a sidecar, probe or eval file of the stem goes with)."""
    return next((p for p in sorted(folder.iterdir()) if p.is_file() and role_of(p) == "dataset" and stem_of(p) == stem),
                None)


_CONTROL_WORDS = {"\n": "a line break", "\r": "a carriage return", "\t": "a tab", "\x1b": "an escape character",
                  "\u2028": "a line separator", "\u2029": "a paragraph separator"}


def name_problem(name: str) -> str | None:
    """Why a dropped file's name cannot name a run (the daemon's refusal, which check and add say first): not
    UTF-8, a control character, too long, or a probe or eval file's name gone wrong (`near_miss`)."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return (f"{shown_name(name)}: the file name is not valid UTF-8, so it cannot name a run or appear in "
                f"logs. Fix: rename it with plain letters, digits, '-' and '_', then drop it again.")
    bad = next((c for c in name if breaks_lines(c)), None)
    if bad is not None:
        what = _CONTROL_WORDS.get(bad, "a control character")
        renamed = "".join("_" if breaks_lines(c) else c for c in name)
        return (f"{shown_name(name)}: the file name holds {what} ({shown_name(bad)}, U+{ord(bad):04X}), which "
                f"would split or fake lines of the daemon's log and cannot name a run. Fix: rename it without "
                f"control characters (e.g. {shown_name(renamed)!r}) and drop it again.")
    if size > SHORT_NAME:
        return (f"{short_name(name, 60)}: the file name is too long ({size} bytes; overnight takes at most "
                f"{SHORT_NAME}, as the run folder adds a date to it). Fix: rename it to a shorter name "
                f"(keeping {Path(name).suffix or 'its suffix'}) and drop it again.")
    meant = near_miss(name)
    return _near_miss_problem(name, meant) if meant else None
