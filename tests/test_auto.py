"""The "auto" decisions as a table (daemon/core/auto.py): the trainer applies them and `overnight check` describes them."""
from __future__ import annotations

import json

import pytest

from daemon.core import auto
from daemon.core.auto import Machine

CPU = Machine(cuda=False, capability=None, has_flash=False)
CPU_FLASH = Machine(cuda=False, capability=None, has_flash=True)  # flash-attn installed, no GPU
H100 = Machine(cuda=True, capability=9, has_flash=True)
H100_NO_FLASH = Machine(cuda=True, capability=9, has_flash=False)
T4 = Machine(cuda=True, capability=7, has_flash=True)


@pytest.mark.parametrize("requested, machine, chosen, why", [
    ("auto", CPU, "sdpa", "auto: the CPU has no flash-attention"),
    ("auto", CPU_FLASH, "sdpa", "auto: the CPU has no flash-attention"),
    ("auto", H100, "flash_attention_2", "auto: flash-attn is installed and the GPU supports it"),
    ("auto", H100_NO_FLASH, "sdpa", "auto: flash-attn is not installed"),
    ("auto", T4, "sdpa", "auto: the GPU is older than Ampere"),
    ("sdpa", H100, "sdpa", "set in the options"),
    ("eager", CPU, "eager", "set in the options"),
    ("flash_attention_2", H100, "flash_attention_2", "set in the options"),
    ("flex_attention", H100, "flex_attention", "set in the options"),
])
def test_attention(requested: str, machine: Machine, chosen: str, why: str) -> None:
    assert auto.attention(requested, machine) == (chosen, why)


@pytest.mark.parametrize("requested, machine, says", [
    ("flash_attention_2", CPU_FLASH, "(this run is on the CPU)"),
    ("flash_attention_2", T4, "an Ampere or newer GPU"),
    ("flash_attention_2", H100_NO_FLASH, "needs the flash-attn package"),
    ("flex_attention", CPU, "trains on a GPU only"),
])
def test_attention_that_cannot_be_had_says_the_fix(requested: str, machine: Machine, says: str) -> None:
    with pytest.raises(ValueError, match="Fix: ") as e:
        auto.attention(requested, machine)
    assert says in str(e.value)


@pytest.mark.parametrize("requested, kind, attention, chosen", [
    ("auto", "text", "flash_attention_2", "padded"),
    ("padding_free", "text", "sdpa", "padded"),
    ("auto", "prompt", "flash_attention_2", "padding_free"),
    ("auto", "chat", "sdpa", "length_grouped"),
    ("auto", "prompt", "eager", "length_grouped"),
    ("padding_free", "prompt", "sdpa", "padding_free"),
    ("padded", "chat", "flash_attention_2", "padded"),
    ("auto", "pair", "flash_attention_2", "padded"),
    ("padding_free", "judged", "sdpa", "padded"),
])
def test_batching(requested: str, kind: str, attention: str, chosen: str) -> None:
    assert auto.batching(requested, kind, attention)[0] == chosen


def test_check_describes_the_batching_the_trainer_will_use(tmp_path, tiny_model, monkeypatch) -> None:
    """flash-attn installed with sdpa set: the run batches length-grouped, and check says so (it used to say
    padding-free whenever flash-attn imported)."""
    from daemon.client.checking import check_file
    from daemon.core.home import Home

    monkeypatch.setattr(auto.Machine, "here", classmethod(lambda cls: H100))
    (tmp_path / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nattn_implementation = "sdpa"\n')
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"prompt": f"p{i}", "completion": "c" * (i + 1)}) + "\n"
                                              for i in range(20)))
    text = "\n".join(check_file(tmp_path / "d.jsonl", Home(tmp_path)).facts)
    assert "batching: length-grouped" in text and "sdpa has no variable-length kernel" in text, text
    (tmp_path / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    text = "\n".join(check_file(tmp_path / "d.jsonl", Home(tmp_path)).facts)
    assert "padding-free" in text and "flash_attention_2 has a variable-length kernel" in text, text


# -- the objective (issue 24): the data's kind decides, an explicit one must fit it ----------------------------
@pytest.mark.parametrize("requested, kind, chosen, why", [
    ("auto", "pair", "dpo", "auto: the records are preference pairs (chosen/rejected)"),
    ("auto", "judged", "kto", "auto: the records are labelled completions (KTO: a 'label' true or false)"),
    ("auto", "text", "sft", "auto: the records are supervised examples"),
    ("auto", "prompt", "sft", "auto: the records are supervised examples"),
    ("auto", "chat", "sft", "auto: the records are supervised examples"),
    ("dpo", "pair", "dpo", "set in the options"),
    ("kto", "judged", "kto", "set in the options"),
    ("sft", "chat", "sft", "set in the options"),
    ("sft", "text", "sft", "set in the options"),
])
def test_objective(requested: str, kind: str, chosen: str, why: str) -> None:
    assert auto.objective(requested, kind) == (chosen, why)


@pytest.mark.parametrize("requested, kind, says, fix", [
    ("dpo", "prompt", "the records are supervised examples", 'set objective = "sft"'),
    ("dpo", "chat", "trains on preference pairs", 'set objective = "sft"'),
    ("kto", "text", "trains on labelled completions", 'set objective = "sft"'),
    ("sft", "pair", "the records are preference pairs", 'set objective = "dpo"'),
    ("kto", "pair", "the records are preference pairs", 'set objective = "dpo"'),
    ("dpo", "judged", "the records are labelled completions", 'set objective = "kto"'),
    ("sft", "judged", "the records are labelled completions", 'set objective = "kto"'),
])
def test_an_objective_that_does_not_fit_the_data_says_the_fix(requested: str, kind: str, says: str, fix: str) -> None:
    with pytest.raises(ValueError, match="Fix: ") as e:
        auto.objective(requested, kind)
    assert says in str(e.value) and fix in str(e.value) and f'objective = "{requested}"' in str(e.value)


@pytest.mark.parametrize("requested, cuda, installed, on, why", [
    ("auto", True, True, True, "auto: a CUDA GPU and liger-kernel are here"),
    ("auto", False, True, False, "auto: Liger's kernels need a GPU"),
    ("auto", True, False, False, "auto: liger-kernel is not installed (pip install 'overnight[gpu]')"),
    (True, True, True, True, "set in the options"),
    (True, False, True, False, "use_liger_kernel = true is ignored: Liger's kernels need a GPU"),
    (False, True, True, False, "set off in the options"),
])
def test_liger(requested: object, cuda: bool, installed: bool, on: bool, why: str) -> None:
    assert auto.liger(requested, cuda, installed) == (on, why)
