"""Small file-name rules shared by intake, control and the registry."""
from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".error.txt")
NAME_MAX = 255  # bytes in one file name, on every file system overnight runs on
# A taken name grows a date (run ids, control/done/) or `.error.txt` and `.1` (rejected/): room for those.
SHORT_NAME = 200


def ignored(name: str) -> bool:
    """Names the spec says are never taken: hidden files and downloads in progress; and an editor's backups
    (`pause~`, emacs' `#pause#`), which sit beside what was edited."""
    return (name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES) or name.endswith("~")
            or (name.startswith("#") and name.endswith("#")))


def file_version(path: Path | None) -> tuple[int, int, int] | None:
    """(mtime, size, inode) of a file, what changes when it is written or replaced; None when there is none."""
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino) if st else None


def short_name(name: str, limit: int = SHORT_NAME) -> str:
    """`name` cut to `limit` bytes (on a character boundary, marked with `~`), so that what is added still fits."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return name
    return raw[:limit - 1].decode("utf-8", "ignore") + "~"


def unique_path(path: Path, suffix: str | None = None) -> Path:
    """`path`, or `path` with .1, .2… before `suffix` (its last suffix unless given, e.g. ".error.txt") when taken:
    a move never overwrites, and a second NAME.error.txt is NAME.1.error.txt, still found by its ending."""
    return unique_paths([(path, suffix)])[0]


def unique_paths(paths: list[tuple[Path, str | None]]) -> list[Path]:
    """Each (path, suffix) numbered alike (.1, .2… before its suffix) with the first number that leaves every one
    free: files that go together (a rejected drop and its NAME.error.txt) keep matching names."""
    for i in range(0, 10_000):
        cands = [_numbered(path, i, path.suffix if suffix is None else suffix) for path, suffix in paths]
        if not any(c.exists() or c.is_symlink() for c in cands):
            return cands
    raise RuntimeError(f"no free name for {paths[0][0]}")


def _numbered(path: Path, i: int, suffix: str) -> Path:
    if not i:
        return path
    base = path.name[: len(path.name) - len(suffix)]
    stem = short_name(base, NAME_MAX - len(f".{i}{suffix}".encode("utf-8", "surrogateescape")))
    return path.with_name(f"{stem}.{i}{suffix}")


def safe_name(text: str) -> str:
    """A file-system- and run-id-safe version of a dataset or model name: letters of any script stay (a run id is
    a folder name and a control file's line, see control.RUN_ID); spaces, slashes and symbols become `-`. A model
    named after its dataset's file name takes this form too, so that its name and its runs' ids agree."""
    # NFC: a name typed on macOS (decomposed é) and the same name typed elsewhere give one run id
    # '..' too: no registered name may hold it (stored_name_problem), and a model nobody can name is unmanageable
    dashed = re.sub(r"[^\w.-]+", "-", unicodedata.normalize("NFC", text))
    return re.sub(r"\.{2,}", ".", dashed).strip("-.") or "dataset"


# --- model names -------------------------------------------------------------------------------------------
# A model name is a folder-name part (trash/NAME-vN-…) and a word on a control file's line (`activate NAME 3`):
# letters and digits of any script (as in run ids, see control.RUN_ID), '.', '_' and '-'; NFC, so an é typed
# decomposed on macOS names the same model.
MODEL_NAME_MAX = 64
MODEL_NAME_RULE = ("letters and digits of any script, '.', '_' and '-', starting with a letter or digit, no '..', "
                   f"at most {MODEL_NAME_MAX} characters")
_MODEL_NAME = re.compile(r"[^\W_][\w.-]*")


def model_name(text: str) -> str:
    """A model name as it is stored and compared: NFC."""
    return unicodedata.normalize("NFC", text)


def model_name_problem(name: str) -> str | None:
    """Why `name` (NFC) cannot be given to a model (the `name` option, init_adapter), in a few words; None when
    it can."""
    problem = stored_name_problem(name, MODEL_NAME_MAX)
    if problem:
        return problem
    if not _MODEL_NAME.fullmatch(name):
        if not _MODEL_NAME.match(name):
            return f"it starts with {name[0]!r}, not a letter or digit"
        bad = next(c for c in name if not re.fullmatch(r"[\w.-]", c))
        return f"it holds {bad!r}, which is not a letter, digit, '.', '_' or '-'"
    return None


def stored_name_problem(name: str, limit: int = SHORT_NAME) -> str | None:
    """What no registered name can be (a name taken from a dataset's file name may hold spaces or symbols): empty,
    a path, a control or invisible character, '..', longer than `limit` characters."""
    if not name:
        return "it is empty"
    if "/" in name or "\\" in name:
        return "it holds a path separator ('/' or '\\')"
    bad = next((c for c in name if unicodedata.category(c)[0] in "CZ" and c != " "), None)
    if bad is not None:
        return f"it holds the control or invisible character U+{ord(bad):04X}"
    if ".." in name:
        return "it holds '..'"
    if len(name) > limit:
        return f"it is {len(name)} characters long (at most {limit})"
    return None


def suggested_model_name(text: str) -> str:
    """The nearest valid name, for a message's Fix."""
    name = re.sub(r"[^\w.-]+", "-", model_name(text))
    name = re.sub(r"\.{2,}", ".", name).strip("-._")[:MODEL_NAME_MAX].strip("-._")
    return name or "model"


def sha256_file(path: Path) -> str:
    """The file's SHA-256 (hex), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shown_name(name: str) -> str:
    """A file name fit for messages and logs, even when its bytes are not UTF-8: a control character or a line
    separator is shown escaped (\\n, \\x1b, \\u2028), so that no name can split a log line or fake one."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if not any(breaks_lines(c) for c in text):
        return text
    return "".join(c.encode("unicode_escape").decode("ascii") if breaks_lines(c) else c for c in text)


def breaks_lines(char: str) -> bool:
    """A character no file name may show raw in a log or a message: a control character (a line break, a tab, an
    escape sequence's ESC, DEL, the C1 controls) or a Unicode line or paragraph separator."""
    return unicodedata.category(char) in ("Cc", "Zl", "Zp")
