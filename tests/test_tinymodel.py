"""The embedded tiny model: builds offline, loads with the Auto classes, tokenizes any UTF-8 consistently."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import budget
from tests.conftest_trainer import tiny_model

SAMPLES = [
    "Hello world 12345, don't stop!",
    "héllo naïve café — 日本語のテキスト 😀 ∑x²",
    "  leading spaces\n\nand\ttabs\r\n",
    "<|im_start|>user\nhi<|im_end|>",
    "",
]


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.getbasetemp(), request.param)


def test_auto_tokenizer_agrees_with_tokenizer_json(model_dir: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    raw = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    for text in SAMPLES:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == raw.encode(text, add_special_tokens=False).ids, text
        assert tok.decode(ids) == text  # byte-level: every UTF-8 string round-trips
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert len(tok) <= json.loads((model_dir / "config.json").read_text())["vocab_size"]


def test_chat_template_marks_only_assistant_tokens(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say hi"},
                {"role": "assistant", "content": "hi there"}, {"role": "user", "content": "again"},
                {"role": "assistant", "content": "hello"}]
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    learned = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(learned) == "hi there<|im_end|>hello<|im_end|>"
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_model_loads_and_generates(model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    expected = "Qwen2ForCausalLM" if "qwen2" in model_dir.name else "LlamaForCausalLM"
    assert type(model).__name__ == expected
    assert sum(p.numel() for p in model.parameters()) < 2_000_000  # tiny: trains in seconds on a CPU
    ids = tok("the cat", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_ensure_tiny_model_builds_once(tmp_path: Path) -> None:
    from daemon.client.tinymodel import ensure_tiny_model

    ensure_tiny_model(tmp_path / "warm")  # torch and transformers imported: their import time is not the build's
    started = time.perf_counter()
    first = ensure_tiny_model(tmp_path)
    build_s = time.perf_counter() - started
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    second = ensure_tiny_model(tmp_path)
    assert first == second == tmp_path / "tiny-qwen2"
    assert (second / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no build leftovers
    # 0.06 s measured on a loaded 2-core VM: a bound a hundred times that only catches a build gone wrong (a
    # network try, a model far bigger than tiny)
    assert build_s < budget(10), f"building the tiny model took {build_s:.1f}s"


def test_same_seed_same_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from daemon.client.tinymodel import build_tiny_model

    a = load_file(build_tiny_model(tmp_path / "a", seed=1) / "model.safetensors")
    b = load_file(build_tiny_model(tmp_path / "b", seed=1) / "model.safetensors")
    c = load_file(build_tiny_model(tmp_path / "c", seed=2) / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)
    assert any((a[k] != c[k]).any() for k in a)
