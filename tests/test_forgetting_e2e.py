"""The forgetting alarm, through the real daemon and trainer on the tiny model: v1 learns task A; v2, continued from
v1 on an unrelated task B with a learning rate high enough to wipe A out, is reported as regressed (the A probes it
lost listed), told once to a local json:// notifier and never activated; a gentle continuation raises no alarm; a
sweep with select = "best" (ranked by select_metric) activates its gentle point, never its regressed one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import overnight
from tests.test_notify import Webhook

pytestmark = pytest.mark.e2e

# Task A and task B share no prompt and no answer. Each word is one token of the tiny model's vocabulary.
TASK_A = [("name of star", "tea back"), ("name of open", "good first"), ("name of show", "part star"),
          ("name of tea", "open show")]
TASK_B = [("color of sea", "blue green"), ("color of sun", "red small"), ("color of moon", "old new"),
          ("color of tree", "big fast")]
OPTIONS = ("batch_size = 8\nmax_length = 32\nlog_every = 5\nsave_every = 100\nlora_r = 32\nlora_alpha = 64\n"
           "prompt_format = \"raw\"\nprobe_max_new_tokens = 4\neval_fraction = 0\nlora_dropout = 0.0\n"
           "probe_every = 100\n")


def _records(pairs: list[tuple[str, str]], repeat: int = 8) -> str:
    return "".join(json.dumps({"prompt": f"{p}:", "completion": f" {c}"}) + "\n" for _ in range(repeat) for p, c in pairs)


def _probes(pairs: list[tuple[str, str]]) -> str:
    return "".join(json.dumps({"prompt": f"{p}:", "reference": c}) + "\n" for p, c in pairs)


def _drop(home: Path, pairs: list[tuple[str, str]], sidecar: str, eval_file: str | None = None) -> None:
    inbox = home / "inbox"
    (inbox / "task.toml").write_text(OPTIONS + sidecar)
    (inbox / "task.probes.jsonl").write_text(_probes(pairs))
    if eval_file is not None:
        (inbox / "task.eval.jsonl").write_text(eval_file)
    (inbox / "task.jsonl").write_text(_records(pairs))
    overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=600, check=True)


def _models(home: Path) -> dict[int, dict]:
    return {m["version"]: m for m in json.loads(overnight("models", "--json", home=home, check=True).stdout)}


def _report(model: dict) -> dict:
    return json.loads((Path(model["adapter_path"]).parent / "eval_report.json").read_text())


def test_a_version_that_forgets_its_parents_answers_is_reported_told_once_and_never_activated(home, tiny_model):
    webhook = Webhook(lifetime=600)
    try:
        (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n\n[notify]\nurls = ["{webhook.url}"]\n'
                                             f'on = ["regressed", "completed"]\n')
        # v1 learns task A; the eval file (A's records) is scored for v1 and the base
        _drop(home, TASK_A, "max_steps = 60\nlearning_rate = 5e-3\n", eval_file=_probes(TASK_A))
        v1 = _models(home)[1]
        first = _report(v1)
        assert first["eval"]["records"] == 4 and set(first["eval"]["scores"]) == {"version", "base"}
        # the intake moved the eval file into the run folder with the dataset, as it moves the probes
        assert Path(first["eval"]["file"]) == Path(v1["adapter_path"]).parent / "dataset" / "task.eval.jsonl"
        assert Path(first["eval"]["file"]).is_file() and not (home / "inbox" / "task.eval.jsonl").exists()
        assert first["eval"]["scores"]["version"]["exact"] > first["eval"]["scores"]["base"]["exact"]
        assert v1["metrics"]["report"]["regressed"] is False and v1["active"]
        knew = {x["prompt"] for x in first["eval"]["answers"] if x["version"] == x["reference"]}
        assert knew, "v1 learned none of task A: the test needs answers to lose"

        # v2 continues from v1 on task B with a learning rate that wipes A out
        _drop(home, TASK_B, 'max_steps = 30\nlearning_rate = 1e-1\ninit_adapter = "task"\n')
        models = _models(home)
        v2 = models[2]
        report = _report(v2)
        lost = {x["prompt"] for x in report["lost"] if x["source"] == "probe"}
        assert lost and lost <= {f"{p}:" for p, _ in TASK_A}  # the A probes v1 knew and v2 lost, by name
        assert report["regressed"] and v2["metrics"]["report"]["regressed"] is True
        assert models[1]["active"] and not v2["active"]  # the alarm: v1 stays the active version
        assert report["forgetting"]["before"] == "parent" and report["forgetting"]["score"] is not None
        # no eval file of its own: v2 is scored on v1's, beside v1 and the base, and the A records it lost are listed
        assert set(report["eval"]["scores"]) == {"version", "parent", "base"}
        assert {x["prompt"] for x in report["lost"] if x["source"] == "eval"} == lost

        text = overnight("models", home=home, check=True).stdout
        assert "REGRESSED" in text and "lost probe: 'name of" in text

        # a gentle continuation (from the active version, v1) loses nothing: no alarm, and it takes over
        _drop(home, TASK_B, 'max_steps = 2\nlearning_rate = 1e-6\ninit_adapter = "task"\n')
        models = _models(home)
        v3 = models[3]
        assert v3["parent"] == "task:1" and _report(v3)["lost"] == [] and not _report(v3)["regressed"]
        assert v3["active"] and not models[1]["active"]

        _dashboard_marks_the_regressed_version_and_what_it_lost(home, v2)
        regressed = webhook.about("regressed")
        assert len(regressed) == 1 and "task v2" in regressed[0]["title"]  # the alarm fired once, for v2
        assert "probe(s) its parent answered right are now wrong" in regressed[0]["message"]

        # a sweep with select = "best" ranked by the forgetting score: the violent point forgets least general
        # text here, but it lost task A, so the gentle point is the one activated
        _drop(home, TASK_B, 'max_steps = 30\nlearning_rate = [1e-1, 1e-6]\ninit_adapter = "task"\n'
                            'select = "best"\nselect_metric = "forgetting"\n')
        models = _models(home)
        violent, gentle = models[4], models[5]
        assert violent["metrics"]["report"]["regressed"] and not gentle["metrics"]["report"]["regressed"]
        assert gentle["active"] and not violent["active"]
        assert len(webhook.about("regressed")) == 2 and len(webhook.about("completed")) == 5
    finally:
        webhook.stop()


def _dashboard_marks_the_regressed_version_and_what_it_lost(home: Path, v2: dict) -> None:
    """At 80×24: the Models tab says v2 is regressed; v2's evolution view marks the A probes lost since task:1."""
    from textual.widgets import DataTable

    from tests.test_tui import app_for, cell_text, drive, loaded, static_text, until

    app = app_for(home)

    async def body(pilot) -> None:
        await loaded(pilot)
        await pilot.press("5")
        models = app.query_one("#models-table", DataTable)
        await until(pilot, lambda: models.row_count == 3, what="three versions")
        assert cell_text(models, "task:2", "state") == "regressed" and cell_text(models, "task:1", "state") == ""
        await pilot.press("1")
        for _ in range(3):  # the runs list, newest first: down to v2's run
            if app.selected_run and app.selected_run.id == v2["run_id"]:
                break
            await pilot.press("down")
        await until(pilot, lambda: app.selected_run and app.selected_run.id == v2["run_id"], what="v2's run")
        await pilot.press("3")
        await until(pilot, lambda: "lost since task:1" in static_text(app, "#evo-summary"), what="lost mark")
        table = app.query_one("#evo-table", DataTable)
        assert cell_text(table, "lost-0", "status") == "✗ lost since task:1"
    drive(app, body)
