"""Which registry row a model reference names: `NAME` is its active version, `NAME:V` that version; a deleted
version is never used in their place (`init_adapter`, `overnight ask`, the Try tab and `activate` all agree)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


class NoVersion(LookupError):
    """Why a reference names no usable version: `why` and `fix` to word in the caller's terms; `trashed` the deleted
    row it names when that is why (the caller says where its adapter is kept)."""

    def __init__(self, why: str, fix: str, trashed: dict[str, Any] | None = None) -> None:
        super().__init__(f"{why}. Fix: {fix}")
        self.why, self.fix, self.trashed = why, fix, trashed


def pick_version(every: Sequence[dict[str, Any]], name: str, version: int | None) -> dict[str, Any]:
    """The row of `name` (every: the registry's rows of any name) that `version` names, None its active one."""
    every = [r for r in every if r["name"] == name]
    rows = [r for r in every if not r["deleted"]]
    trashed = [r for r in every if r["deleted"] and (version is None or r["version"] == version)]
    if trashed and (not rows or version is not None):
        label = f"{name} v{version}" if version is not None else f"every version of {name}"
        raise NoVersion(f"{label} was deleted (overnight delete)", "use a version overnight models lists as not "
                        "deleted", trashed[-1])
    if not rows:
        raise NoVersion(f"no registered model named {name!r}", "use a name from `overnight models`")
    kept = ", ".join(str(r["version"]) for r in rows)
    if version is None:
        row = next((r for r in rows if r["active"]), None)
        if row is None:  # its active version was deleted (or a sweep has not chosen yet): guessing would be silent
            raise NoVersion(f"no active version of {name} (it has {kept})",
                            f"activate one (overnight activate {name} V) or name a version {name}:V")
        return row
    row = next((r for r in rows if r["version"] == version), None)
    if row is None:
        raise NoVersion(f"{name} has no version {version} (it has {kept})", "pick one of those")
    return row


def deleted_version(name: str, row: dict[str, Any]) -> str:
    """Why `activate` refuses a deleted version: a version in the trash cannot serve as NAME (there is no undelete:
    its folder is the adapter)."""
    return (f"{name} v{row['version']} was deleted (overnight delete): its adapter is kept at {row['adapter_path']}, "
            f"and a deleted version cannot be the active one. Fix: activate a version overnight models lists as not "
            f"deleted, or continue from that folder (init_adapter = \"{row['adapter_path']}\").")


def missing_adapter(row: dict[str, Any]) -> str | None:
    """Why a version not deleted cannot serve (its run folder was moved or removed by hand), or None."""
    adapter = Path(row["adapter_path"] or "")
    if row["deleted"] or (adapter / "adapter_config.json").is_file():
        return None
    return (f"{row['name']} v{row['version']}'s adapter is missing from {adapter}. Fix: put its run folder back "
            f"(overnight doctor lists what is missing), or use another version.")


def already_deleted(name: str, row: dict[str, Any]) -> str:
    """Why `delete` refuses a version in the trash."""
    return (f"{name} v{row['version']} is already in the trash: {row['adapter_path']}. Fix: nothing to do: it was "
            f"deleted before, and its adapter is kept in that folder.")
