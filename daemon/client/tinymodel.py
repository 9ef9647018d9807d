"""The embedded tiny model: a random-init causal LM and a byte-level BPE tokenizer, built offline in ~1 s.

It is what `overnight demo` and the tests train: small enough for a laptop CPU, real enough that every code
path (LoRA, chat template with assistant masks, checkpoints, adapters) runs exactly as it would on a real model.
Nothing heavy is imported at module import time: the daemon imports this module without loading torch.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

# The exact pre-tokenisation transformers 5 forces on any `model_type: qwen2` tokenizer
# (models/qwen2/tokenization_qwen2.py). Training with the same pipeline makes tokenizer.json and
# AutoTokenizer agree token for token.
QWEN2_SPLIT_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                     r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [PAD_TOKEN, "<|im_start|>", EOS_TOKEN]

# ChatML (tool calls as Qwen and Hermes write them), with {% generation %} around what the assistant says so that
# apply_chat_template(..., return_assistant_tokens_mask=True) marks exactly the tokens to train on.
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n# Tools\\n' + (tools | tojson) + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- (message['content'] or '') }}"
    "{%- for call in message.get('tool_calls') or [] %}"
    "{%- set call = call.function if call.function is defined else call %}"
    "{%- if message['content'] or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n' + ({'name': call.name, 'arguments': call.arguments} | tojson) + '\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_WORDS = """
the be to of and a in that have I it for not on with he as you do at this but his by from they we say her she
or an will my one all would there their what so up out if about who get which go me when make can like time no
just him know take people into year your good some could them see other than then now look only come its over
think also back after use two how our work first well way even new want because any these give day most us is
are was were been has had did said made went came took saw knew thought told found gave called asked felt left
put meant kept let began seemed helped showed heard played ran moved lived believed brought happened wrote
sat stood lost paid met included continued set learned changed led understood watched followed stopped created
spoke read spent grew opened walked won offered remembered loved considered appeared bought waited served died
sent expected built stayed fell cut reached killed remained suggested raised passed sold required reported
decided pulled man woman child world school state family student group country problem hand part place case
week company system program question government number night point home water room mother area money story
fact month lot right study book eye job word business issue side kind head house service friend father power
hour game line end member law car city community name president team minute idea kid body information back
parent face others level office door health person art war history party result change morning reason
research girl guy moment air teacher force education foot boy age policy music market sense nation plan
college interest death experience effect class control care field development role effort rate heart drug
show light voice wife police mind price report decision son view relationship town road arm difference value
building action model season society tax director position player record paper space ground form event
official matter center couple site project activity star table need court oil situation cost industry figure
street image phase red blue green yellow black white orange purple brown grey cat dog bird fish horse cow
sheep apple banana bread cheese milk tea coffee rice salt sugar sun moon star rain snow wind tree river sea
mountain hill lake stone fire small large big little long short high low old young early late hot cold happy
sad easy hard fast slow open close begin finish start stop yes no please thank hello goodbye sorry true false
answer reverse sort count add subtract multiply divide list first second third last next before after above
below left right up down here there always never often sometimes today tomorrow yesterday
"""

_SENTENCES = """
The quick brown fox jumps over the lazy dog.
A small model learns simple patterns from a few examples.
Please reverse the order of these words.
What is the capital of France? The capital of France is Paris.
Translate the following sentence into French.
Write a short poem about the sea and the moon.
Summarise the text below in one sentence.
The cat sat on the mat and looked at the bird in the tree.
Two plus two is four, and three times three is nine.
She said: "I will be there at 10:30, don't wait for me!"
Numbers like 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14 -7 1,000 appear in text.
Question: Why is the sky blue? Answer: Because air scatters blue light more than red light.
def add(a, b): return a + b  # a tiny function
{"name": "value", "list": [1, 2, 3], "ok": true}
You are a helpful assistant. Answer the question as well as you can.
User: hello there! Assistant: Hello! How can I help you today?
Instruction: sort the list. Input: banana, apple, cherry. Output: apple, banana, cherry.
Email me at someone@example.com or visit https://example.com/path?x=1&y=2 for more.
"""

_PUNCTUATION = "0123456789 . , ; : ! ? ' \" ( ) [ ] { } < > / \\ | - _ + = * & ^ % $ # @ ~ ` \n \t"


def training_corpus() -> list[str]:
    """The embedded text the BPE merges are learned from (repeated so common words merge first)."""
    words = _WORDS.split()
    sentences = [s for s in _SENTENCES.strip().splitlines() if s.strip()]
    lines = [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]
    return lines * 4 + sentences * 2 + [" ".join(words).capitalize(), _PUNCTUATION]


def _train_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer with Qwen2's exact normaliser and pre-tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is a token: any UTF-8 encodes
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    return tok


def _model_config(arch: str, vocab_size: int, hidden_size: int, layers: int, heads: int,
                  intermediate_size: int | None, special_ids: dict[str, int]):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=special_ids[EOS_TOKEN],
        pad_token_id=special_ids[PAD_TOKEN],
    )
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "llama":
        return LlamaConfig(**common)
    raise ValueError(f"build_tiny_model: unknown arch {arch!r}; use 'qwen2' or 'llama'")


def build_tiny_model(out_dir: Path | str, *, arch: str = "qwen2", vocab_size: int = 512, hidden_size: int = 128,
                     layers: int = 4, heads: int = 4, intermediate_size: int | None = None, seed: int = 0) -> Path:
    """Build a random-init causal LM plus its tokenizer into `out_dir` and return the folder.

    The folder loads with `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`; the
    tokenizer has a ChatML chat template with generation markers, `<|im_end|>` as eos and `<|endoftext|>` as
    pad. `arch="llama"` gives a LlamaConfig twin with the same tokenizer (to test a second architecture).
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, TokenizersBackend

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = _train_tokenizer(vocab_size)
    special_ids = {t: raw.token_to_id(t) for t in SPECIAL_TOKENS}
    tokenizer = TokenizersBackend(
        tokenizer_object=raw,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        bos_token=None,
        model_max_length=2048,
        chat_template=CHAT_TEMPLATE,
    )
    config = _model_config(arch, max(vocab_size, raw.get_vocab_size()), hidden_size, layers, heads,
                           intermediate_size, special_ids)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=special_ids[EOS_TOKEN],
                                               pad_token_id=special_ids[PAD_TOKEN])
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a one-shard progress bar is noise in `overnight demo`'s output
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _pin_tokenizer_class(out / "tokenizer_config.json")
    return out


def _pin_tokenizer_class(path: Path) -> None:
    # Name the Qwen2 class for both architectures: its pipeline is the one the vocabulary was trained with,
    # so AutoTokenizer builds the same tokenizer whatever model_type says.
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    cfg["add_prefix_space"] = False
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def ensure_tiny_model(cache_dir: Path | str, *, arch: str = "qwen2") -> Path:
    """The embedded tiny model under `cache_dir`, built on first use and reused afterwards.

    It is built in a temporary folder beside the final one and renamed into place, so a crash mid-build
    or two processes building at once never leave a half-written model behind.
    """
    cache = Path(cache_dir)
    final = cache / f"tiny-{arch}"
    if (final / "config.json").exists() and (final / "tokenizer.json").exists():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tiny-{arch}.", suffix=".tmp", dir=cache))
    try:
        build_tiny_model(tmp, arch=arch)
        os.rename(tmp, final)
    except OSError:
        if not (final / "config.json").exists():
            raise
        # another process finished first; its model is identical (same seed), keep it
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
