from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from daemon.client.cli import main
from daemon.core.options import OptionsError, load_home_toml, load_sidecar, resolve


def write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def test_unknown_key_names_the_closest_valid_one(tmp_path):
    with pytest.raises(OptionsError) as e:
        load_sidecar(write(tmp_path / "d.toml", "learning_rat = 1e-3\n"))
    assert "d.toml" in str(e.value) and "'learning_rat'" in str(e.value) and "Did you mean 'learning_rate'" in str(e.value)


@pytest.mark.parametrize("text, hint", [
    ("lr = 1e-3", "Did you mean 'learning_rate'"),
    ("gradient_accumulation_steps = 4", "Did you mean 'grad_accum'"),
    ("[training]\nlearning_rate = 1e-3", "Keys are flat"),
])
def test_other_tools_names_and_tables_get_a_hint(tmp_path, text, hint):
    with pytest.raises(OptionsError) as e:
        load_sidecar(write(tmp_path / "d.toml", text + "\n"))
    assert hint in str(e.value)


@pytest.mark.parametrize("text, allowed", [
    ("lora_r = 0", "1 .. 1024"),
    ("learning_rate = 5.0", "> 0 and <= 1"),
    ("eval_fraction = 0.9", "0 .. 0.5"),
    ("epochs = true", "> 0"),
    ("batch_size = 'eight'", "1 .. 4096"),
    ("name = 'has space'", "letters and digits of any script"),
])
def test_bad_values_say_the_allowed_range(tmp_path, text, allowed):
    with pytest.raises(OptionsError) as e:
        load_sidecar(write(tmp_path / "d.toml", text + "\n"))
    assert text.split()[0] in str(e.value) and allowed in str(e.value)


@pytest.mark.parametrize("key", ["trust_remote_code = true", "hooks = {on_complete = ['true']}", "gpus = 'all'"])
def test_owner_only_keys_refused_in_sidecar_but_allowed_in_home_toml(tmp_path, key):
    with pytest.raises(OptionsError, match="only be set by the machine owner"):
        load_sidecar(write(tmp_path / "d.toml", key + "\n"))
    assert load_home_toml(write(tmp_path / "overnight.toml", key + "\n"))


@pytest.mark.parametrize("text, table", [('executor = ["slurm"]', 'a line [executor] at the end of the file, and '
                                                                   'under it its keys, e.g. kind = "slurm"'),
                                         ('hooks = "true"', "a line [hooks]"), ('notify = ["x"]', "a line [notify]")])
def test_a_table_option_written_as_a_value_is_told_how_a_table_is_written(tmp_path, text, table):
    """The Fix said `executor = "slurm"`, itself refused."""
    with pytest.raises(OptionsError) as e:
        load_home_toml(write(tmp_path / "overnight.toml", text + "\n"))
    assert f"Fix: write it as a table: {table}" in str(e.value)


def test_every_bad_key_of_a_file_is_reported_at_once_each_with_its_fix(tmp_path):
    # a user fixing a file learns all that is wrong with it in one go, not one error per drop
    for load, name, extra in ((load_sidecar, "d.toml", "trust_remote_code = true\n"),
                              (load_home_toml, "overnight.toml", "epochs = [1, 2]\n")):
        with pytest.raises(OptionsError) as e:
            load(write(tmp_path / name, "lora_rank = 8\nlearning_rate = -1\nlora_r = 4\n" + extra))
        lines = str(e.value).splitlines()
        assert len(lines) == 3 and all(f"{name}: " in line and "Fix:" in line for line in lines), lines
        assert "'lora_rank'" in lines[0] and "'learning_rate' = -1" in lines[1]


def test_toml_syntax_error_names_file(tmp_path):
    with pytest.raises(OptionsError, match="d.toml: not valid TOML"):
        load_sidecar(write(tmp_path / "d.toml", "lora_r = = 3\n"))


@pytest.mark.parametrize("text, line", [("max_steps = 3\nlearning_rate = [1e-4\n", "line 2: learning_rate = [1e-4"),
                                        ("name = 'x\n", "line 1: name = 'x")])
def test_something_left_open_names_the_line_it_was_opened_on(tmp_path, text, line):
    """tomllib finds an unclosed bracket or quote only at the end of the file ("at end of document")."""
    with pytest.raises(OptionsError) as e:
        load_sidecar(write(tmp_path / "d.toml", text))
    assert f"(at end of document); left open on {line}. Fix:" in str(e.value), str(e.value)


def test_precedence_and_provenance(tmp_path):
    toml = load_home_toml(write(tmp_path / "overnight.toml", "base_model = '/m'\nlearning_rate = 1e-3\nlora_r = 8\n"))
    side = load_sidecar(write(tmp_path / "d.toml", "lora_r = 32\n"))
    r = resolve(toml, side)
    assert r.values["lora_r"] == 32 and r.sources["lora_r"] == "sidecar"
    assert r.values["learning_rate"] == 1e-3 and r.sources["learning_rate"] == "toml"
    assert r.values["seed"] == 42 and r.sources["seed"] == "default"
    assert r.base_models == ["/m"]


def test_list_of_base_models(tmp_path):
    r = resolve({}, load_sidecar(write(tmp_path / "d.toml", "base_model = ['/a', '/b']\n")))
    assert r.base_models == ["/a", "/b"]


def test_the_trainers_options_are_the_schemas_training_options():
    """TrainOptions is derived from OPTIONS: the same names, defaults and types, nothing written twice."""
    from dataclasses import MISSING, fields

    from daemon.core.options import OPTIONS
    from daemon.trainer.config import TrainOptions

    trained = {k: o for k, o in OPTIONS.items() if o.trainer}
    assert {"max_length", "lora_r", "trust_remote_code", "keep_checkpoints"} <= trained.keys()
    assert not {"priority", "hooks", "notify", "name", "gpus", "min_free_gb"} & trained.keys()  # the daemon's own
    # a list default (report_to) is a fresh copy per instance: its field has a default_factory
    defaults = {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(TrainOptions)}
    assert defaults == {k: o.default for k, o in trained.items()}
    assert "max_length: int = 1024" in TrainOptions.__doc__
    opts = TrainOptions.from_dict({"base_model": "m", "max_length": 64, "priority": 3, "hooks": {}, "seed": None})
    assert (opts.base_model, opts.max_length, opts.seed) == ("m", 64, OPTIONS["seed"].default)


# --- the README's options table ---------------------------------------------------------------------------------
def test_the_readme_lists_every_option_as_the_schema_says() -> None:
    from daemon.core.options import OPTIONS, README, options_table, readme_with_table
    text = README.read_text(encoding="utf-8")
    assert readme_with_table(text) == text, (
        "README.md's options table differs from daemon/core/options.py OPTIONS. "
        "Regenerate it: python -m daemon.core.options --readme")
    table = options_table()
    for name, opt in OPTIONS.items():
        assert f"| `{name}` |" in table or f"| `[{name}]` |" in table, name


def test_the_table_marks_what_a_sidecar_may_not_set_and_what_sweeps() -> None:
    from daemon.core.options import options_table
    rows = {r.split(" | ")[0].strip("| `[]"): r.split(" | ") for r in options_table().splitlines()[2:]}
    assert rows["trust_remote_code"][1:5] == ["`false`", "true or false", "", "yes"]
    assert rows["learning_rate"][3:5] == ["yes", ""] and rows["name"][1] == "unset"
    assert rows["optim"][2].startswith('one of "adamw_torch"')


def test_python_m_daemon_options_prints_the_table_and_readme_replaces_only_what_is_between_the_markers() -> None:
    import subprocess
    import sys
    from daemon.core.options import TABLE_BEGIN, TABLE_END, options_table, readme_with_table
    from tests.conftest import REPO
    printed = subprocess.run([sys.executable, "-m", "daemon.core.options"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout
    assert printed == options_table() + "\n"
    stale = f"# x\nbefore\n{TABLE_BEGIN}\n| old | table |\n{TABLE_END}\nafter\n"
    assert readme_with_table(stale) == f"# x\nbefore\n{TABLE_BEGIN}\n{options_table()}\n{TABLE_END}\nafter\n"


# --- one value per option: fixed when queued, or live ---------------------------------------------------------
def test_every_option_is_either_fixed_when_queued_or_live_never_both() -> None:
    """A live option is the owner's, read from overnight.toml by every process: the trainer never takes it from the
    run's config.json (TrainOptions has no field for it), and config.json does not record it."""
    from daemon.core.options import OPTIONS
    live = {k for k, o in OPTIONS.items() if o.live}
    assert {"min_free_gb", "hooks", "notify", "gpus", "stall_minutes", "torchrun"} <= live
    assert {"trust_remote_code", "keep_checkpoints", "learning_rate", "priority", "init_adapter"}.isdisjoint(live)
    assert all(OPTIONS[k].owner_only and not OPTIONS[k].trainer for k in live)
    config = resolve({"min_free_gb": 0.5, "trust_remote_code": True, "gpus": "all"}, {"lora_r": 4}).to_config()
    assert config["options"]["trust_remote_code"] is True and config["options"]["lora_r"] == 4
    assert live.isdisjoint(config["options"]) and live.isdisjoint(config["sources"])


def test_the_table_says_when_each_option_applies() -> None:
    from daemon.core.options import OPTIONS, options_table
    rows = {r.split(" | ")[0].strip("| `[]"): r.split(" | ") for r in options_table().splitlines()[2:]}
    for name, opt in OPTIONS.items():
        assert rows[name][5] == ("live" if opt.live else "when queued"), name
    assert rows["min_free_gb"][5] == "live" and rows["trust_remote_code"][5] == "when queued"


def test_a_live_setting_is_read_again_when_the_file_changes_and_a_broken_file_keeps_the_last_value(tmp_path):
    from daemon.core.options import LiveSetting
    toml, said = tmp_path / "overnight.toml", []
    setting = LiveSetting(toml, "min_free_gb", said.append)
    assert setting() == 1.0  # no file: the default
    write(toml, "min_free_gb = 5\n")
    assert setting() == 5
    write(toml, "min_free_gb = 0.25\n")
    assert setting() == 0.25
    write(toml, "min_free_gb = " + "[" * 3000 + "]" * 3000 + "\n")
    assert setting() == 0.25 and setting() == 0.25
    assert len(said) == 1 and "overnight.toml: line 1" in said[0] and "keeps min_free_gb = 0.25" in said[0]
    with pytest.raises(AssertionError, match="config.json"):
        LiveSetting(toml, "trust_remote_code")


# --- nesting: a clear rejection, never a RecursionError ------------------------------------------------------
@pytest.mark.parametrize("text", [
    "a = " + "[" * 5000 + "]" * 5000,
    "a = " + "{b = " * 5000 + "1" + "}" * 5000,
    "x = 1\n" + "a" + ".a" * 3000 + " = 1",
    "[" + ".".join(["t"] * 3000) + "]",
    "lora_r = " + "[" * 40 + "8" + "]" * 40,
])
@pytest.mark.parametrize("load, name", [(load_sidecar, "d.toml"), (load_home_toml, "overnight.toml")])
def test_deeply_nested_toml_is_refused_naming_the_file_the_line_and_the_fix(tmp_path, text, load, name):
    with pytest.raises(OptionsError) as e:
        load(write(tmp_path / name, text + "\n"))
    message = str(e.value)
    assert message.startswith(f"{tmp_path / name}: line ") and "nested more than" in message and "Fix:" in message
    assert "x = 1" not in text or "line 2" in message


def test_an_unreadable_overnight_toml_is_an_options_error(tmp_path):
    (tmp_path / "overnight.toml").mkdir()
    with pytest.raises(OptionsError, match="overnight.toml: cannot be read .*Fix:"):
        load_home_toml(tmp_path / "overnight.toml")


# --- preference training (issue 24) -----------------------------------------------------------------------------

def test_objective_beta_and_loss_type_have_trls_defaults_and_reach_the_trainer(tmp_path):
    from daemon.core.options import OPTIONS
    opts = resolve(None, load_sidecar(write(tmp_path / "d.toml", 'objective = "dpo"\nbeta = 0.5\nloss_type = "ipo"\n')))
    assert (opts.values["objective"], opts.values["beta"], opts.values["loss_type"]) == ("dpo", 0.5, "ipo")
    assert {k: OPTIONS[k].default for k in ("objective", "beta", "loss_type")} == {
        "objective": "auto", "beta": 0.1, "loss_type": "sigmoid"}
    assert all(OPTIONS[k].trainer and not OPTIONS[k].live for k in ("objective", "beta", "loss_type"))


@pytest.mark.parametrize("text, says", [
    ('objective = "orpo"', 'one of "auto", "sft", "dpo", "kto"'),
    ("beta = 0", "> 0"),
    ("beta = -0.1", "> 0"),
    ('loss_type = "orpo"', "experimental trainers (trl.experimental), which overnight does not offer"),
    ('loss_type = "simpo"', "experimental"),
    ('loss_type = "cpo"', "experimental"),
    ('loss_type = "sigmod"', "Did you mean 'sigmoid'"),
    ('loss_type = ["sigmoid", "orpo"]', "experimental"),
])
def test_bad_preference_options_are_refused_with_the_fix(tmp_path, text, says):
    with pytest.raises(OptionsError) as e:
        load_sidecar(write(tmp_path / "d.toml", text + "\n"))
    message = str(e.value)
    assert "d.toml" in message and says in message and "Fix:" in message
    if "loss_type" in text:  # the allowed ones are named
        assert "sigmoid, hinge, ipo" in message and "sigmoid_norm" in message


def test_lists_of_beta_or_loss_type_are_sweeps(tmp_path):
    from daemon.core import sweep
    opts = resolve(None, load_sidecar(write(tmp_path / "d.toml", 'beta = [0.1, 0.5]\nloss_type = ["sigmoid", "ipo"]\n')))
    assert opts.swept == ["beta", "loss_type"] and sweep.run_count(opts) == 4
    opts = resolve({"base_model": "m"}, load_sidecar(tmp_path / "d.toml"))  # a grid needs a base model
    runs = [sweep.options_for(opts, p).values for p in sweep.expand(opts)]
    assert [(r["beta"], r["loss_type"]) for r in runs] == [(0.1, "sigmoid"), (0.1, "ipo"), (0.5, "sigmoid"),
                                                          (0.5, "ipo")]
    with pytest.raises(OptionsError, match="cannot be swept"):
        load_sidecar(write(tmp_path / "e.toml", 'objective = ["dpo", "kto"]\n'))


def test_a_toml_syntax_error_and_a_wrong_type_get_a_fix_that_fits(tmp_path):
    r = CliRunner().invoke(main, ["check", str(write(tmp_path / "a.toml", 'base_model = "/x\n'))])
    assert r.exit_code == 1 and "not valid TOML" in r.output and "closed on the same line" in r.output
    r = CliRunner().invoke(main, ["check", str(write(tmp_path / "b.toml", 'max_steps = "ten"\n'))])
    assert r.exit_code == 1 and "Fix: e.g. max_steps = 100 (TOML: strings in quotes" in r.output, r.output


def test_an_unknown_option_names_the_likely_one_or_else_lists_them(tmp_path):
    with pytest.raises(OptionsError) as near:
        load_sidecar(write(tmp_path / "a.toml", "learnin_rate = 3e-4\n"))
    assert "Did you mean 'learning_rate'?" in str(near.value) and "Valid options" not in str(near.value)
    with pytest.raises(OptionsError) as far:
        load_sidecar(write(tmp_path / "b.toml", "zzzz = 1\n"))
    assert "Valid options: " in str(far.value) and "learning_rate" in str(far.value)
