"""How fast chat data is tokenised with its trained spans, against the tokenizer's own batch call on the same text.

    python bench/tokenise_speed.py                      # 2,000 eight-turn conversations, the embedded tokenizer
    python bench/tokenise_speed.py --model PATH         # a real model's tokenizer and chat template
    python bench/tokenise_speed.py --turns 32           # longer conversations: the cost must stay linear in turns

overnight (the trainer's own Encoder) renders each conversation once through the run's chat template (generation
markers: one render, whatever the number of turns), tokenises batches of them in one call and maps the trained
character spans onto the tokens. The baseline is the lower bound for
any tokenisation of that text: `tokenizers`' `encode_batch` of the already rendered strings (parallel, in Rust),
which knows nothing of what to train. Goal: overnight at ≥ 0.5 of the baseline's records/s.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORDS = ("the quick brown fox jumps over a lazy dog and runs far away into the night while birds sing "
         "softly above old stone walls near quiet rivers").split()


def conversations(n: int, turns: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """`n` conversations: a system turn, then `turns` exchanges of 20-60 words per message."""
    rng = random.Random(seed)

    def say(role: str) -> dict[str, str]:
        return {"role": role, "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))}

    return [[say("system"), *[say(r) for _ in range(turns) for r in ("user", "assistant")]] for _ in range(n)]


def timed(fn, repeats: int) -> float:  # noqa: ANN001
    """The median wall time of `fn()` over `repeats` runs."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a model folder (default: the embedded tiny model, built here)")
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--turns", type=int, default=8, help="user/assistant exchanges per conversation")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from daemon.core.templating import choose
    from daemon.client.tinymodel import ensure_tiny_model
    from daemon.trainer.sequences import BATCH_RECORDS, Encoder

    model = args.model or ensure_tiny_model(Path(tempfile.mkdtemp(prefix="tokenise-speed-")))
    fmt = choose("auto", model)
    if fmt is None:
        sys.exit(f"{model} has no chat template")
    hf = AutoTokenizer.from_pretrained(model)
    tokenizer = hf.backend_tokenizer
    chats = [(i, {"kind": "chat", "messages": c, "tools": None})
             for i, c in enumerate(conversations(args.records, args.turns))]
    texts = [fmt.render(c["messages"])[0] for _, c in chats]

    def overnight() -> None:
        encoder = Encoder(hf, max_length=1 << 30, model_name=model.name, chat=fmt)
        for at in range(0, len(chats), BATCH_RECORDS):
            encoder.encode_many(chats[at:at + BATCH_RECORDS])

    ours = timed(overnight, args.repeats)
    baseline = timed(lambda: tokenizer.encode_batch(texts, add_special_tokens=False), args.repeats)
    tokens = sum(len(e.ids) for e in tokenizer.encode_batch(texts[:200], add_special_tokens=False)) / min(200, len(texts))
    print(f"{args.records} conversations of {args.turns} exchanges (~{tokens:.0f} tokens each), template: "
          f"{fmt.describe()}, model: {model.name}")
    print(f"overnight (render once, batch-tokenise, labels): {args.records / ours:8.0f} records/s")
    print(f"baseline (tokenizers encode_batch, text only):     {args.records / baseline:8.0f} records/s")
    print(f"ratio: {baseline / ours:.2f} (goal ≥ 0.5)")


if __name__ == "__main__":
    main()
