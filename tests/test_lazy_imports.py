"""The idle daemon stays small: heavy libraries load only when a file needs them (bench/README: idle memory)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

HEAVY = ("pyarrow", "pandas", "numpy", "datasets", "torch", "transformers")


def loaded_after(code: str) -> list[str]:
    """The heavy modules in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport sys, json; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("module", ["daemon.client.cli", "daemon.engine.scheduler", "daemon.engine.intake", "daemon.engine.store"])
def test_daemon_modules_import_nothing_heavy(module: str) -> None:
    assert loaded_after(f"import {module}") == []


def test_a_jsonl_drop_is_validated_without_pyarrow(tmp_path) -> None:
    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    assert loaded_after(f"from daemon.core.datasets import inspect_dataset; inspect_dataset(__import__('pathlib')"
                        f".Path({str(tmp_path / 'd.jsonl')!r}))") == []


def test_a_parquet_drop_loads_pyarrow_and_the_store_still_works(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "p", "completion": "c"}]), tmp_path / "d.parquet")
    code = (f"from pathlib import Path; from daemon.engine.store import Store; from daemon.core.datasets import inspect_dataset\n"
            f"assert inspect_dataset(Path({str(tmp_path / 'd.parquet')!r})).records == 1\n"
            f"Store(Path({str(tmp_path / 'x.db')!r}))")
    assert "pyarrow" in loaded_after(code)


def test_check_show_renders_through_a_chat_template_without_torch(tmp_path, tiny_model) -> None:
    (tmp_path / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    code = (f"from pathlib import Path; from daemon.client.checking import check_file; from daemon.core.home import Home\n"
            f"v = check_file(Path({str(tmp_path / 'd.jsonl')!r}), Home(Path({str(tmp_path)!r})), 1)\n"
            f"assert v.ok and '<|im_start|>' in v.shown[0][0]['text'], v")
    assert "torch" not in loaded_after(code)  # transformers' template renderer, numpy: fine; torch: never


def _imported(code: str) -> set[str]:
    probe = f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    return set(json.loads(out.stdout.splitlines()[-1]))


# The daemon process's own modules and the client's: the trainer subprocess imports none of them.
DAEMON_SIDE = ("daemon.engine.scheduler", "daemon.engine.supervisor", "daemon.engine.controller", "daemon.engine.intake",
               "daemon.engine.store", "daemon.engine.runner", "daemon.engine.hooks", "daemon.engine.notify",
               "daemon.engine.registry", "daemon.engine.rebuild", "daemon.client.cli", "daemon.core.render",
               "daemon.core.queries", "daemon.client.export")


def test_the_trainer_imports_neither_the_daemon_the_client_nor_their_libraries() -> None:
    loaded = _imported("import daemon.trainer.__main__, daemon.trainer.run, daemon.trainer.setup")
    assert not {m.split(".")[0] for m in loaded} & {"click", "textual", "sqlite_utils", "apprise", "tui"}
    assert not loaded & set(DAEMON_SIDE)
