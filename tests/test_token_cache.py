"""tokens.npz: a run's tokenised splits, read back only for the key they were made for."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from daemon.trainer.sequences import Encoded, Prepared, SequenceDataset
from daemon.trainer.token_cache import load, save


def prepared() -> Prepared:
    train = SequenceDataset([Encoded(np.array([1, 2, 3], np.int32), np.array([-100, 2, 3], np.int32)),
                             Encoded(np.array([4, 5], np.int32))])  # a text block: every token a label
    evals = SequenceDataset([Encoded(np.array([6, 7, 8, 9], np.int32), np.array([-100, -100, 8, 9], np.int32))])
    return Prepared(train, evals, [{"id": 0, "prompt": "p", "reference": "r"}], "chat", {"truncated": 1})


def rows(items: SequenceDataset | None) -> list[tuple[list[int], list[int] | None]]:
    return [(i.input_ids.tolist(), None if i.labels is None else i.labels.tolist()) for i in items.items]


def test_a_round_trip_gives_the_same_sequences(tmp_path: Path) -> None:
    save(tmp_path / "tokens.npz", "k1", prepared())
    back = load(tmp_path / "tokens.npz", "k1")
    assert back is not None and rows(back.train) == rows(prepared().train)
    assert rows(back.eval) == rows(prepared().eval)
    assert (back.kind, back.probes, back.stats) == ("chat", prepared().probes, {"truncated": 1})
    assert not list(tmp_path.glob(".*tmp"))


def test_another_key_or_a_damaged_file_tokenises_again(tmp_path: Path) -> None:
    path = tmp_path / "tokens.npz"
    assert load(path, "k1") is None
    save(path, "k1", Prepared(prepared().train, None, [], "prompt", {}))
    assert load(path, "k2") is None
    assert load(path, "k1").eval is None
    path.write_bytes(path.read_bytes()[:100])
    assert load(path, "k1") is None
