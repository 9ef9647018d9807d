"""Train what you serve: the chat template and prompt format a run uses, shown by `overnight check --show`, carried
into the adapter and the merged export, which then stops where a server stops."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import overnight

IM_END = "<|im_end|>"


def base_without_template(tiny: Path, dest: Path, context: int | None = None, chatml_tokens: bool = True) -> Path:
    """The tiny model as a *base* release: no chat template, eos <|endoftext|> (as Qwen2.5 base ships); without
    `chatml_tokens`, its tokenizer does not know <|im_start|> and <|im_end|> either."""
    shutil.copytree(tiny, dest)
    (dest / "chat_template.jinja").unlink()
    config = json.loads((dest / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (dest / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|endoftext|>"}))
    tok = json.loads((dest / "tokenizer.json").read_text())
    if not chatml_tokens:  # their two vocabulary slots keep names no text can produce
        tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] not in ("<|im_start|>", IM_END)]
        vocab = tok["model"]["vocab"]
        for i, name in enumerate(("<|im_start|>", IM_END)):
            vocab[f"<unused{i}>"] = vocab.pop(name)
        (dest / "tokenizer.json").write_text(json.dumps(tok))
    endoftext = next(t["id"] for t in tok["added_tokens"] if t["content"] == "<|endoftext|>")
    (dest / "generation_config.json").write_text(json.dumps({"eos_token_id": endoftext, "pad_token_id": endoftext}))
    if context:
        model = json.loads((dest / "config.json").read_text())
        (dest / "config.json").write_text(json.dumps({**model, "max_position_embeddings": context}))
    return dest


def show(home: Path, path: Path, n: int = 1) -> list[Any]:
    res = overnight("check", str(path), "--show", str(n), "--json", home=home)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)[0]


def alpaca(path: Path) -> Path:
    path.write_text(json.dumps([{"instruction": "Name a colour.", "input": "", "output": "Teal.",
                                 "system": "Answer in one word."}]))
    return path


def test_alpaca_on_a_templated_model_is_one_exchange_with_only_the_answer_trained(home: Path, tiny_model: Path):
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    verdict = show(home, alpaca(home.parent / "colours.json"))
    assert verdict["chat_template"] == "the model's own" and verdict["prompt_format"] == "chat"
    [segments] = verdict["examples"]
    trained = [s["text"] for s in segments if s["train"]]
    assert trained == ["Teal." + IM_END]  # the answer and its end of turn, nothing else
    prompt = "".join(s["text"] for s in segments if not s["train"])
    assert "<|im_start|>system\nAnswer in one word.<|im_end|>" in prompt
    assert "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n" in prompt

    # raw: today's prompt text + answer, and the human view marks what trains
    (home.parent / "colours.toml").write_text('prompt_format = "raw"\n')
    [raw] = show(home, home.parent / "colours.json")["examples"]
    assert raw == [{"text": "Answer in one word.\n\nName a colour.", "train": False},
                   {"text": "Teal." + IM_END, "train": True}]
    out = overnight("check", str(home.parent / "colours.json"), "--show", "1", home=home).stdout
    assert "prompt format: raw" in out and "[[Teal.<|im_end|>]]" in out


def test_a_stock_qwen3_template_trains_through_its_training_version(home: Path, tiny_model: Path, tmp_path: Path):
    from daemon.core.templating import trl_folder

    model = shutil.copytree(tiny_model, tmp_path / "qwen3-like")
    shutil.copy(trl_folder() / "qwen3.jinja", model / "chat_template.jinja")  # refuses multi-turn prefix masking
    (home / "overnight.toml").write_text(f'base_model = "{model}"\n')
    data = tmp_path / "talk.jsonl"
    data.write_text(json.dumps({"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"}, {"role": "assistant", "content": "see you"}]}) + "\n")
    verdict = show(home, data)
    assert verdict["chat_template"] == "qwen3 (trl's training version)"
    trained = [s["text"] for s in verdict["examples"][0] if s["train"]]
    assert trained == ["<think>\n\n</think>\n\nhello<|im_end|>\n", "<think>\n\n</think>\n\nsee you<|im_end|>\n"]


def test_a_sharegpt_system_field_beside_a_system_turn_renders_one_system_block(home: Path, tiny_model: Path,
                                                                               tmp_path: Path):
    """LLaMA-Factory's converter keeps a first system turn and ignores the record's 'system' field: so does the
    render, rather than two system blocks."""
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    data = tmp_path / "share.json"
    data.write_text(json.dumps([{"system": "FIELD-SYSTEM", "conversations": [
        {"from": "system", "value": "TURN-SYSTEM"}, {"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}]))
    verdict = show(home, data)
    text = "".join(s["text"] for s in verdict["examples"][0])
    assert text.count("<|im_start|>system") == 1 and "TURN-SYSTEM" in text and "FIELD-SYSTEM" not in text, text
    assert any("the turn is used and the field ignored" in n for n in verdict["report"]["notes"])


def test_bad_templates_and_missing_ones_say_the_fix(home: Path, tiny_model: Path, tmp_path: Path):
    base = base_without_template(tiny_model, tmp_path / "base")
    (home / "overnight.toml").write_text(f'base_model = "{base}"\n')
    data = tmp_path / "talk.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    cases = {
        "": 'has no chat template, so chat records cannot be formatted. Fix: set chat_template to a family name',
        'chat_template = "qwen9"\n': 'chat_template = "qwen9" is not a chat template family overnight knows. Fix:',
        'chat_template = "broken.jinja"\n': "does not parse: ",
        'chat_template = "missing.jinja"\n': f'chat_template = "{home}/missing.jinja": cannot read the file',
        # a relative path is the home's, never the folder check runs in (the daemon's is another)
        'chat_template = "daemon/core/templates/chatml.jinja"\n':
            f'"{home}/daemon/core/templates/chatml.jinja": cannot read the file (No such file or directory)',
        'chat_template = "chatml"\nprompt_format = "chat"\n': None,
    }
    (home / "broken.jinja").write_text("{% for m in messages %}{{ m.content }")  # a relative path: the home's
    for sidecar, error in cases.items():
        (tmp_path / "talk.toml").write_text(sidecar)
        res = overnight("check", str(data), "--json", home=home)
        verdict = json.loads(res.stdout)[0]
        if error is None:
            assert res.returncode == 0 and verdict["chat_template"] == "chatml (overnight)", verdict
        else:
            assert res.returncode == 1 and error in verdict["error"], (sidecar, verdict["error"])
    # a conversation the template itself refuses: its own words, with the record number
    (tmp_path / "talk.toml").write_text('chat_template = "mistral"\n')
    data.write_text(json.dumps({"messages": [{"role": "assistant", "content": "first"},
                                             {"role": "user", "content": "then"}]}) + "\n")
    res = overnight("check", str(data), "--show", "1", home=home)
    assert res.returncode == 1 and "record 1: the chat template refuses this conversation: Conversation roles must " \
                                   "alternate" in res.stdout and "Fix:" in res.stdout, res.stdout


def test_a_default_max_length_adapts_to_a_short_context(home: Path, tiny_model: Path, tmp_path: Path):
    base = base_without_template(tiny_model, tmp_path / "short", context=256)
    (home / "overnight.toml").write_text(f'base_model = "{base}"\n')
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    out = overnight("check", str(data), home=home)
    assert out.returncode == 0 and "the default 1024 is longer than the context" in out.stdout
    assert "this run uses max_length = 256" in out.stdout
    (tmp_path / "p.toml").write_text("max_length = 1024\n")  # said by the user: refused, with the fix
    out = overnight("check", str(data), home=home)
    assert out.returncode == 1 and "max_length = 1024 is longer than the context" in out.stdout


@pytest.mark.e2e
def test_chatml_on_a_base_model_trains_and_the_merged_export_stops_on_im_end(home: Path, tiny_model: Path,
                                                                            tmp_path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from tests.conftest_trainer import reversal_records

    base = base_without_template(tiny_model, tmp_path / "base", context=256, chatml_tokens=False)
    generation = json.loads((base / "generation_config.json").read_text())
    eom = 7  # a second token the base model stops on, as Llama 3.1 stops on <|eom_id|> after a tool call
    (base / "generation_config.json").write_text(json.dumps({**generation, "eos_token_id": [generation["eos_token_id"],
                                                                                            eom]}))
    (home / "overnight.toml").write_text(f'base_model = "{base}"\n')
    records = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
               for r in reversal_records(160, seed=3)]
    (home / "inbox" / "rev.toml").write_text('chat_template = "chatml"\nmax_steps = 200\nlearning_rate = 3e-3\n'
                                             'lora_r = 32\nbatch_size = 16\nprobe_count = 4\neval_fraction = 0\n'
                                             'save_every = 1000\n')
    (home / "inbox" / "rev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    checked = json.loads(overnight("check", str(home / "inbox" / "rev.jsonl"), "--json", home=home,
                                   check=True).stdout)[0]["as_trained"]["tokens"]
    res = overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    [run] = json.loads(overnight("runs", "--json", home=home, check=True).stdout)
    run_dir = Path(run["run_dir"])
    console = (run_dir / "console.log").read_text()
    assert run["state"] == "completed", console[-3000:]
    assert "chat template: chatml (overnight)" in console and "this run uses max_length = 256" in console
    assert "added the special tokens <|im_start|>, <|im_end|> the base model lacks" in console
    # check counted the tokens the trainer added as one token each, as the trainer does (the mean differs by the
    # records held out as probes)
    trained = json.loads((run_dir / "stats.json").read_text())["tokens"]
    assert (checked["min"], checked["max"]) == (trained["min"], trained["max"]), (checked, trained)

    adapter = run_dir / "adapter"
    template = (adapter / "chat_template.jinja").read_text()
    # the serving version of what trained: no generation tags, which other jinja engines do not parse
    assert "<|im_start|>" in template and not re.search(r"{%-?\s*(end)?generation", template)
    out = tmp_path / "merged"
    assert overnight("export", run["id"], str(out), "--merge", home=home, timeout=300).returncode == 0
    tok = AutoTokenizer.from_pretrained(out)
    im_end = tok.convert_tokens_to_ids(IM_END)
    assert im_end >= 512 and len(tok) == 514  # the two new tokens, after the base's 512
    config = GenerationConfig.from_pretrained(out)
    assert im_end in config.eos_token_id and tok.eos_token_id in config.eos_token_id and eom in config.eos_token_id

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape[0] == 514
    # the adapter alone also carries the new rows: it loads onto the base once the base has room for them
    from peft import PeftModel
    plain = AutoModelForCausalLM.from_pretrained(base)
    plain.resize_token_embeddings(len(AutoTokenizer.from_pretrained(adapter)))
    with_adapter = PeftModel.from_pretrained(plain, adapter).merge_and_unload()
    assert torch.allclose(with_adapter.get_input_embeddings().weight, model.get_input_embeddings().weight)
    ids = tok.apply_chat_template([{"role": "user", "content": records[0]["messages"][0]["content"]}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        generated = model.generate(**ids, max_new_tokens=40, do_sample=False)[0, ids["input_ids"].shape[1]:]
    assert generated[-1].item() == im_end and len(generated) < 40, tok.decode(generated)
    assert tok.decode(generated[:-1]).strip()  # an answer, then the end of the turn


def test_check_counts_the_tokens_the_trainer_trains(home: Path, tiny_model: Path, realdata: Path):
    """One validation: check's lengths, cuts and drops on real tool-call data are the trainer's own (its Encoder)."""
    from transformers import AutoTokenizer

    from daemon.core.datasets import iter_examples
    from daemon.core.templating import choose
    from daemon.trainer.sequences import Encoder

    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nmax_length = 256\n')
    glaive = realdata / "glaive_toolcall_en_demo.json"
    res = overnight("check", str(glaive), "--json", home=home)
    checked = json.loads(res.stdout)[0]["as_trained"]
    encoder = Encoder(AutoTokenizer.from_pretrained(tiny_model), 256, "tiny", choose("auto", tiny_model))
    items = encoder.encode_many(list(enumerate(encoder.shaped(e) for e in iter_examples(glaive))))
    lengths = encoder.lengths
    assert checked["tokens"]["min"] == min(lengths) and checked["tokens"]["max"] == max(lengths)
    assert checked["tokens"]["mean"] == round(sum(lengths) / len(lengths), 1)
    assert (checked["truncated"], checked["dropped"]) == (encoder.truncated, sum(i is None for i in items)) and encoder.truncated


def test_a_raw_prompt_is_shown_and_counted_with_the_bos_the_trainer_adds(home: Path, tiny_model: Path,
                                                                         tmp_path: Path):
    """A tokenizer that starts every text with a BOS (Llama's <|begin_of_text|>): `check --show` of a raw prompt
    shows it, and counts it, as the trainer's encoding has it."""
    from tokenizers import Tokenizer, processors
    from transformers import AutoTokenizer

    from daemon.core.datasets import iter_examples
    from daemon.trainer.sequences import Encoder

    model = shutil.copytree(tiny_model, tmp_path / "with-bos")
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    bos = "<|endoftext|>"
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    tok.save(str(model / "tokenizer.json"))
    (home / "overnight.toml").write_text(f'base_model = "{model}"\nprompt_format = "raw"\n')
    data = alpaca(tmp_path / "colours.json")
    [segments] = show(home, data)["examples"]
    assert segments[0] == {"text": bos + "Answer in one word.\n\nName a colour.", "train": False}
    encoder = Encoder(AutoTokenizer.from_pretrained(model), 1024, "bos")
    encoder.encode_many(list(enumerate(iter_examples(data))))
    assert encoder.lengths[0] == json.loads(overnight("check", str(data), "--json", home=home).stdout)[0][
        "as_trained"]["tokens"]["max"]


def test_show_on_plain_text_prints_the_blocks_the_run_trains(home: Path, tiny_model: Path):
    """A text record longer than max_length is trained as blocks of max_length tokens: --show shows those blocks
    (records joined, each ended by eos), not the whole 40,000-character record."""
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nmax_length = 32\n')
    article = home.parent / "article.txt"
    article.write_text("the quick brown fox jumps over the lazy dog. " * 900)
    verdict = show(home, article, n=3)
    blocks = ["".join(s["text"] for s in block) for block in verdict["examples"]]
    assert len(blocks) == 3 and all(s["train"] for block in verdict["examples"] for s in block)
    assert all(len(b) < 200 for b in blocks) and "".join(blocks) in article.read_text()
    out = overnight("check", str(article), "--show", "1", home=home).stdout
    assert "--- block 1 (" in out and "--- example" not in out


def test_the_token_that_ends_a_tool_call_turn_is_added_and_stopped_on(home: Path, tiny_model: Path):
    """GLM ends a tool-call turn with <|observation|>, gpt-oss with <|call|>: one token each in the adapter's
    tokenizer (not characters), trained, and in the stop ids a server gets, as the real models' configs have them.
    Plain text, which trains through no template, adds none."""
    from transformers import AutoTokenizer

    from tests.test_templates import TOOL_TURNS, TOOLS

    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    records = "".join(json.dumps({"messages": TOOL_TURNS, "tools": TOOLS}) + "\n" for _ in range(8))
    for stem, family in (("glm", "glm4moe"), ("oss", "gptoss")):
        (home / "inbox" / f"{stem}.toml").write_text(f'chat_template = "{family}"\nmax_steps = 2\nbatch_size = 4\n'
                                                     'probe_count = 0\neval_fraction = 0\nmax_length = 768\n')
        (home / "inbox" / f"{stem}.jsonl").write_text(records)
    # plain text trains through no template: a named one adds none of its tokens
    (home / "inbox" / "txt.toml").write_text('chat_template = "gemma3"\nmax_steps = 2\nbatch_size = 4\n'
                                             'probe_count = 0\neval_fraction = 0\nmax_length = 64\n')
    (home / "inbox" / "txt.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
    assert overnight("daemon", "--once", "--settle", "0.2", "--quiet", home=home, timeout=600).returncode == 0
    runs = {r["name"]: r for r in json.loads(overnight("runs", "--json", home=home, check=True).stdout)}
    text_console = (Path(runs["txt"]["run_dir"]) / "console.log").read_text()
    assert runs["txt"]["state"] == "completed" and "added the special tokens" not in text_console, text_console
    assert "unused: text records are trained as they are" in text_console and "prompt format: chat" not in text_console
    for stem, end in (("glm", "<|observation|>"), ("oss", "<|call|>")):
        adapter = Path(runs[stem]["run_dir"]) / "adapter"
        assert runs[stem]["state"] == "completed", (adapter.parent / "console.log").read_text()[-2000:]
        tok = AutoTokenizer.from_pretrained(adapter)
        assert len(tok(end, add_special_tokens=False)["input_ids"]) == 1, end
        stops = json.loads((adapter / "generation_config.json").read_text())["eos_token_id"]
        assert tok.convert_tokens_to_ids(end) in stops, (end, stops)


def test_a_models_own_template_that_writes_tokens_its_tokenizer_lacks_is_said(home: Path, tiny_model: Path,
                                                                              tmp_path: Path):
    """Llama 3.1's template pasted onto a ChatML tokenizer: its turn tokens would train as pieces of text and never
    stop a server; check says so, with the fix (the tiny model's own template: nothing said)."""
    import shutil

    from tests.test_templates import FILES
    model = tmp_path / "pasted"
    shutil.copytree(tiny_model, model)
    shutil.copy(FILES["llama3_1.jinja"], model / "chat_template.jinja")
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "yo"}]}) + "\n")
    for base, said in ((model, True), (tiny_model, False)):
        (home / "overnight.toml").write_text(f'base_model = "{base}"\n')
        out = overnight("check", str(data), home=home, check=True).stdout
        assert ("writes <|start_header_id|>, <|end_header_id|>, <|eot_id|>, which its tokenizer does not have as "
                "tokens" in out) == said and ('chat_template = "FAMILY"' in out) == said, out
