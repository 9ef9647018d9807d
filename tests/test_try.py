"""The dashboard's Try tab, driven with Textual's Pilot at 80×24: the versions it picks, and real answers from the
answers process while the real daemon trains a run beside it."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input, Static

from tests.conftest import DaemonProcess, overnight, wait_until
from tests.conftest_trainer import reversal_records
from tests.nvml_fake import GIB, FakeGpu, fake_pynvml
from tests.test_tui import app_for, drive, loaded, screen_text, until
from tests.tui_fixtures import build_home
from tui.widgets.trypanel import default_models, parse_models

RECORDS = "".join(json.dumps(r) + "\n" for r in reversal_records(40, seed=2))
FAST = ("batch_size = 4\nmax_length = 48\nlog_every = 1\nlearning_rate = 3e-3\nprobe_max_new_tokens = 4\n"
        "eval_fraction = 0\nlora_dropout = 0.0\n")


def test_try_picks_the_active_version_its_parent_and_the_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tui.widgets import trypanel

    # the kept answers process ends itself after a second without a prompt: the next prompt starts another
    monkeypatch.setattr(trypanel, "WORKER", [*trypanel.WORKER[:-1], "1"])
    fx = build_home(tmp_path / "home")
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await pilot.press("6")
        await until(pilot, lambda: app.query_one("#try-models", Input).value, what="default versions")
        assert app.query_one("#try-models", Input).value == "alpaca-small:2 alpaca-small:1 base"
        assert app.focused is app.query_one("#try-prompt", Input)  # the tab opens ready to type
        await pilot.press(*"q p s")  # typed into the prompt: no key of the dashboard fires
        assert app.query_one("#try-prompt", Input).value == "q p s" and app.is_running
        status = str(app.query_one("#try-status", Static).render())
        assert "Enter in the prompt asks each version" in status
        # the run under the cursor trains still: no version of its own, the newest model is shown instead
        assert "reverse-words, the selected run's name, has no version" in status and "alpaca-small, is shown" in status
        # a version picked by hand that the registry lacks: the answers process says so in one line
        app.query_one("#try-models", Input).value = "alpaca-small:9 base"
        await pilot.press("enter")
        await until(pilot, lambda: app.try_panel.answered >= 1, timeout=60, what="the answers process")
        status = str(app.query_one("#try-status", Static).render())
        assert "no model version 'alpaca-small:9'" in status and "Fix:" in status, status
        await pilot.pause(1.5)  # the registry is read again: a version typed by hand stays
        assert app.query_one("#try-models", Input).value == "alpaca-small:9 base"
        kept = app.try_panel._kept
        assert kept is not None and kept.popen.wait(30) == 0  # idle for its second: it ended by itself
        app.query_one("#try-prompt", Input).focus()
        await pilot.press("enter")
        await until(pilot, lambda: app.try_panel.answered >= 2, timeout=60, what="the answers after the idle end")
        assert "no model version 'alpaca-small:9'" in str(app.query_one("#try-status", Static).render())
    drive(app, body)


def test_answers_of_versions_no_longer_shown_are_cleared(tmp_path: Path) -> None:
    """A new active version replaces the defaults: the answers of the old ones go with them."""
    from daemon.engine.store import Store
    from tui.widgets.trypanel import TryPanel

    fx = build_home(tmp_path / "home")
    app = app_for(fx.root)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await pilot.press("6")
        await until(pilot, lambda: app.query_one("#try-models", Input).value, what="default versions")
        app.try_panel.post_message(TryPanel.Answered({"answers": [{"model": "alpaca-small:2", "answer": "hi"}],
                                                      "device": "cpu", "device_why": "no GPU"}, None, 0.5))
        await until(pilot, lambda: app.try_panel.answered >= 1, what="the answer shown")
        assert len(app.query(".try-answer")) == 1
        store = Store(fx.home.db)
        try:
            store.add_model({"name": "alpaca-small", "run_id": "alpaca-small-20260514-010000", "base_model": "m",
                             "metrics": {}, "adapter_path": str(fx.root / "x"), "parent": None})
        finally:
            store.close()
        await until(pilot, lambda: app.query_one("#try-models", Input).value.startswith("alpaca-small:3"),
                    what="the new version picked")
        await until(pilot, lambda: not app.query(".try-answer"), what="the old answers cleared")
        assert "Enter in the prompt asks each version" in str(app.query_one("#try-status", Static).render())
    drive(app, body)


def test_versions_typed_are_parsed_and_base_is_a_word() -> None:
    assert parse_models("rev:2, rev:1  base") == (["rev:2", "rev:1"], True)
    assert parse_models("rev") == (["rev"], False)
    assert default_models((), None) == []


def test_the_gpu_is_used_only_when_the_model_fits_beside_the_training_run(
        tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.trainer.answers import placement

    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([FakeGpu(used=60 * GIB)]))  # 20 GiB free
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    big = tmp_path / "seven-b"
    big.mkdir()
    (big / "config.json").write_text(json.dumps({  # a 7B Llama's shape: 13.5 GiB of 16-bit weights
        "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "intermediate_size": 11008,
        "vocab_size": 32000}))
    training = build_home(tmp_path / "home").root  # a run training on this home
    idle = tmp_path / "idle"
    assert placement(training, [("tiny", tiny_model)], cuda=True)[0] == "cuda"
    where, why = placement(training, [("7b", big)], cuda=True)
    assert where == "cpu" and "beside the training run" in why and "20.0 GiB free" in why
    assert placement(idle, [("7b", big)], cuda=True)[0] == "cuda"  # no run: 80% of the free memory
    assert placement(idle, [("7b", big), ("tiny", tiny_model)], cuda=False) == ("cpu", "no GPU")


@pytest.mark.e2e
def test_answers_appear_while_a_run_keeps_training(home: Path, tiny_model: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (home / "inbox" / "rev.toml").write_text(FAST + "max_steps = 6\nsave_every = 6\n")
    (home / "inbox" / "rev.jsonl").write_text(RECORDS)
    overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=300, check=True)
    (home / "inbox" / "long.toml").write_text(FAST + "max_steps = 5000\nsave_every = 5000\nprobe_count = 0\n")
    (home / "inbox" / "long.jsonl").write_text(RECORDS)
    daemon = DaemonProcess(home)
    try:
        def training() -> dict[str, Any] | None:
            runs = json.loads(overnight("runs", "--json", home=home).stdout or "[]")
            return next((r for r in runs if r["name"] == "long" and (r.get("step") or 0) >= 1), None)
        wait_until(training, 180, what="the long run training")
        app = app_for(home)

        async def body(pilot: Any) -> None:
            await loaded(pilot)

            def step() -> int:
                run = next(r for r in app.snapshot.runs if r.name == "long")
                return run.step or 0
            await pilot.press("6")
            await until(pilot, lambda: app.query_one("#try-models", Input).value == "rev:1 base", what="defaults")
            await pilot.press(*"reverse: sun moon", "enter")
            asked_at = step()
            await until(pilot, lambda: app.try_panel.answered >= 1, timeout=240, what="the answers")
            status = str(app.query_one("#try-status", Static).render())
            assert "answered on cpu (no GPU)" in status, status
            titles = [str(w.border_title) for w in app.query(".try-answer")]
            assert titles == ["rev:1", "base"]
            text = screen_text(app)
            assert "rev:1" in text and "base" in text and "Traceback" not in text
            answered_at = step()
            await until(pilot, lambda: step() > answered_at, timeout=60, what="the run's next steps")
            assert step() > asked_at
            first = [str(w.render()) for w in app.query(".try-answer")]
            await pilot.press("enter")  # the same prompt again: the kept process answers, nothing is loaded again
            await until(pilot, lambda: app.try_panel.answered >= 2, timeout=240, what="the second answers")
            status = str(app.query_one("#try-status", Static).render())
            assert "models still loaded from the last prompt" in status, status
            assert [str(w.render()) for w in app.query(".try-answer")] == first
        drive(app, body)
        long = next(r for r in json.loads(overnight("runs", "--json", home=home).stdout) if r["name"] == "long")
        assert long["state"] == "training", long
    finally:
        daemon.stop()
    console = next((home / "runs").glob("long-*/console.log")).read_text()
    assert "Traceback" not in console
