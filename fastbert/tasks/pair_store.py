"""Pretraining pairs on disk, so that a corpus of any size is pretrained in bounded memory.

``write_pairs`` reads the corpus as a stream, a window of documents at a time (the window: ``window`` documents
and up to as many again, so the last window is never a lone document), tokenizes each window's sentences and
makes its pairs (fastbert/tasks/pretrain_data.py; a NotNext segment comes from another document of the same
window, as the original recipe takes it from another document of the same input shard). Each pair goes to the
validation store with probability ``validation_share`` (the first pair always, when the share is positive), else
to the training store. Memory holds one window; the pairs themselves are on disk.

A store is a folder of two flat files: ``tokens.int32`` (every pair's ``[CLS] A [SEP] B [SEP]`` one after the
other) and ``pairs.rec`` (per pair: where its tokens start, how many, where B starts, its NSP label).
``PairStore`` reads the tokens memory-mapped and the index (17 bytes a pair) into memory, as a map-style
Dataset of the rows ``PretrainingCollator`` takes.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..batch.files import InputError
from .pretrain_data import make_pairs

RECORD = np.dtype([("start", "<i8"), ("length", "<i4"), ("b_start", "<i4"), ("label", "i1")])


class _Writer:
    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.tokens = open(folder / "tokens.int32", "wb")
        self.records = open(folder / "pairs.rec", "wb")
        self.n_tokens = self.n_pairs = 0

    def add(self, input_ids: list[int], b_start: int, label: int) -> None:
        record = np.array([(self.n_tokens, len(input_ids), b_start, label)], dtype=RECORD)
        self.tokens.write(np.asarray(input_ids, dtype="<i4").tobytes())
        self.records.write(record.tobytes())
        self.n_tokens += len(input_ids)
        self.n_pairs += 1

    def close(self) -> None:
        self.tokens.close()
        self.records.close()


class PairStore:
    """The pairs in ``folder`` as a Dataset: row i is ``{"input_ids", "token_type_ids", "next_sentence_label"}``;
    ``lengths`` holds every row's length."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.records = np.fromfile(folder / "pairs.rec", dtype=RECORD)
        self.tokens = np.memmap(folder / "tokens.int32", dtype="<i4", mode="r") if len(self.records) else None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def lengths(self) -> np.ndarray:
        return self.records["length"]

    def __getitem__(self, i: int) -> dict[str, Any]:
        start, length, b_start, label = self.records[i].tolist()
        ids = np.array(self.tokens[start : start + length], dtype=np.int64)
        types = np.zeros(length, dtype=np.int64)
        types[b_start:] = 1
        return {"input_ids": ids, "token_type_ids": types, "next_sentence_label": label}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))


def _windows(documents: Iterable[list[str]], window: int) -> Iterator[list[list[str]]]:
    buffer: list[list[str]] = []
    for doc in documents:
        buffer.append(doc)
        if len(buffer) >= 2 * window:
            yield buffer[:window]
            buffer = buffer[window:]
    if buffer:
        yield buffer


def write_pairs(
    documents: Iterable[list[str]],
    tokenizer: Any,
    folder: Path,
    max_seq_length: int,
    seed: int,
    short_seq_prob: float = 0.1,
    nsp: bool = True,
    validation_share: float = 0.0,
    window: int = 5000,
) -> tuple[PairStore, PairStore]:
    """(training pairs, validation pairs) from the documents, made a window at a time and stored under
    ``folder``/train and ``folder``/validation. Raises InputError when the corpus yields no training pair."""
    if window < 2:
        raise InputError(f"window: expected at least 2 documents, got {window}")
    rng, split = random.Random(seed), random.Random(seed + 1)
    train, held_out = _Writer(folder / "train"), _Writer(folder / "validation")
    try:
        for docs in _windows(documents, window):
            ids = iter(tokenizer([s for d in docs for s in d], add_special_tokens=False)["input_ids"])
            tokenized = [[t for t in (next(ids) for _ in d) if t] for d in docs]
            pairs = make_pairs(
                tokenized, tokenizer.cls_token_id, tokenizer.sep_token_id, max_seq_length, rng, short_seq_prob, nsp
            )
            for p in pairs:
                first = held_out.n_pairs == 0 and train.n_pairs == 0
                to = held_out if validation_share > 0 and (first or split.random() < validation_share) else train
                to.add(p.input_ids, p.token_type_ids.index(1), p.next_sentence_label)
    finally:
        train.close()
        held_out.close()
    if train.n_pairs == 0:
        raise InputError("corpus: too little text to make a training pair")
    return PairStore(folder / "train"), PairStore(folder / "validation")
