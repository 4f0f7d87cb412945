"""BERT's pretraining data, as the original recipe (google-research/bert, create_pretraining_data.py) makes it.

Documents: a ``.txt`` corpus in BERT's format (one sentence per line, a blank line between documents) or
``.jsonl`` / ``.parquet`` with one document per row (field ``text``; its sentences are its lines). Each sentence
is tokenized once (WordPiece, without special tokens).

Pairs (``make_pairs``), per document: sentences are gathered until they reach a target length (the maximum,
``max_seq_length - 3``, or with probability ``short_seq_prob`` a random shorter one); the gathered chunk is cut
at a random sentence boundary into A and B. Next-sentence prediction draws IsNext / NotNext with probability
1/2 each. IsNext keeps B, the text that follows A in the document (a one-sentence chunk is cut inside the
sentence). NotNext (and a one-token sentence, which has nothing to cut) replaces B with text from a random other
document and puts the unused sentences back. Too long a pair loses tokens from the front of A or the back of B
(whichever is longer), so an IsNext pair stays one contiguous stretch of its document. ``[CLS] A [SEP] B [SEP]``,
token types 0 then 1. With ``nsp=False`` every pair is IsNext and no label is made.

Masking (``mask_tokens``, at batch time, so each epoch draws new masks): ``rate * n`` of a sequence's n
non-special tokens, rounded up or down at random so that the share is ``rate`` on average (at least one),
chosen at random (whole words with ``whole_word=True``: a word and its
``##`` continuations together); each chosen token becomes [MASK] with probability 0.8, a random vocabulary
token with 0.1, and stays with 0.1. Labels are the original ids at the chosen positions, -100 elsewhere.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..batch.files import InputError

IGNORE = -100


def read_documents(path: str, text_field: str = "text") -> Iterator[list[str]]:
    """The documents of a corpus file, each a list of its non-empty lines (sentences)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such corpus file")
    suffix = p.suffix.lower()
    if suffix in (".txt", ".text"):
        doc: list[str] = []
        with open(p, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    doc.append(line)
                elif doc:
                    yield doc
                    doc = []
        if doc:
            yield doc
    elif suffix in (".jsonl", ".parquet"):
        from ..batch.files import Reader

        reader = Reader(path, text_field=text_field)
        for text, _ in reader:
            lines = [s.strip() for s in text.splitlines() if s.strip()]
            if lines:
                yield lines
    else:
        raise InputError(f"{path}: a corpus is .txt (BERT's format), .jsonl or .parquet")


@dataclass
class Pair:
    input_ids: list[int]
    token_type_ids: list[int]
    next_sentence_label: int  # 0: B follows A (IsNext), 1: B is random (NotNext)


def _truncate(a: list[int], b: list[int], limit: int) -> None:
    """Shorten the longer of A and B until they fit: A from its front, B from its back (A + B stays contiguous)."""
    while len(a) + len(b) > limit:
        if len(a) > len(b):
            del a[0]
        else:
            b.pop()


def make_pairs(
    documents: Sequence[Sequence[Sequence[int]]],
    cls_id: int,
    sep_id: int,
    max_seq_length: int,
    rng: random.Random,
    short_seq_prob: float = 0.1,
    nsp: bool = True,
) -> list[Pair]:
    """Pairs from tokenized documents (each a list of sentences, each a list of token ids)."""
    if max_seq_length < 5:
        raise InputError(f"max_seq_length: expected at least 5, got {max_seq_length}")
    if nsp and sum(1 for d in documents if d) < 2:
        raise InputError("corpus: next-sentence prediction needs at least two documents (or turn NSP off)")
    limit = max_seq_length - 3
    pairs = []
    for d, doc in enumerate(documents):
        target = rng.randint(2, limit) if rng.random() < short_seq_prob else limit
        chunk: list[Sequence[int]] = []
        length, i = 0, 0
        while i < len(doc):
            chunk.append(doc[i])
            length += len(doc[i])
            if i == len(doc) - 1 or length >= target:
                random_next = nsp and rng.random() < 0.5
                if len(chunk) >= 2:
                    cut = rng.randint(1, len(chunk) - 1)
                    a = [t for s in chunk[:cut] for t in s]
                    b = [t for s in chunk[cut:] for t in s]
                elif random_next or len(chunk[0]) < 2:  # one sentence: all of it is A
                    random_next = nsp
                    a, b = list(chunk[0]), []
                else:  # one sentence, IsNext: cut inside it
                    cut = rng.randint(1, len(chunk[0]) - 1)
                    a, b = list(chunk[0][:cut]), list(chunk[0][cut:])
                if random_next:
                    b = []
                    other = d
                    while other == d or not documents[other]:
                        other = rng.randrange(len(documents))
                    rdoc = documents[other]
                    for j in range(rng.randrange(len(rdoc)), len(rdoc)):
                        b.extend(rdoc[j])
                        if len(b) >= target - len(a):
                            break
                    if len(chunk) >= 2:
                        i -= len(chunk) - cut  # the unused sentences start the next chunk
                if a and b:
                    _truncate(a, b, limit)
                    pairs.append(
                        Pair(
                            [cls_id, *a, sep_id, *b, sep_id],
                            [0] * (len(a) + 2) + [1] * (len(b) + 1),
                            int(random_next),
                        )
                    )
                chunk, length = [], 0
                target = rng.randint(2, limit) if rng.random() < short_seq_prob else limit
            i += 1
    return pairs


def mask_tokens(
    input_ids: np.ndarray,
    special: np.ndarray,
    rng: np.random.Generator,
    mask_id: int,
    vocab_size: int,
    rate: float = 0.15,
    word_start: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(masked ids, labels) for one sequence. special: True where a token must never be chosen; word_start: True
    at the first token of each word (whole-word masking), None to choose tokens one by one."""
    ids = input_ids.copy()
    labels = np.full_like(ids, IGNORE)
    candidates = np.flatnonzero(~special)
    if len(candidates) == 0:
        return ids, labels
    expected = rate * len(candidates)  # rounded at random, so the share masked is `rate` on average
    n_mask = min(len(candidates), max(1, int(expected) + int(rng.random() < expected - int(expected))))
    if word_start is None:
        chosen = rng.choice(candidates, size=n_mask, replace=False)
    else:
        words: dict[int, list[int]] = {}
        last = -1
        for c in candidates:
            if word_start[c] or last < 0 or c != words[last][-1] + 1:
                words[c] = [c]
                last = c
            else:
                words[last].append(c)
        picked: list[int] = []
        for w in rng.permutation(list(words)):
            if len(picked) >= n_mask:
                break
            if len(picked) + len(words[w]) > n_mask and picked:
                continue
            picked.extend(words[w])
        chosen = np.array(picked, dtype=np.int64)
    labels[chosen] = ids[chosen]
    r = rng.random(len(chosen))
    ids[chosen[r < 0.8]] = mask_id
    rand = chosen[(r >= 0.8) & (r < 0.9)]
    ids[rand] = rng.integers(0, vocab_size, len(rand))
    return ids, labels


class PretrainingCollator:
    """Pads a batch of Pairs and masks it afresh (transformers' Trainer calls it for every batch). With seed=None
    each batch's masks are drawn from a generator seeded by torch's global RNG (and the process's rank), which the
    Trainer's checkpoints save and restore, so a resumed run masks as the uninterrupted one would; with a seed,
    from one generator of that seed (the same masks every time: evaluation)."""

    def __init__(
        self, tokenizer: Any, rate: float = 0.15, whole_word: bool = False, nsp: bool = True, seed: int | None = None
    ):
        self.pad_id, self.mask_id = tokenizer.pad_token_id, tokenizer.mask_token_id
        self.vocab_size, self.rate, self.nsp = len(tokenizer), rate, nsp
        self.special_ids = np.array(sorted(set(tokenizer.all_special_ids)))
        self.whole_word = whole_word
        if whole_word:
            vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
            self.continuation = np.array([t.startswith("##") for t in vocab])
        self.rng = None if seed is None else np.random.default_rng(seed)

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        # torch's RNG is seeded alike in every process of a torchrun job: the rank keeps their masks apart
        rng = self.rng or np.random.default_rng([int(torch.randint(0, 2**62, ())), int(os.environ.get("RANK", 0))])
        n = max(len(r["input_ids"]) for r in batch)
        ids = np.full((len(batch), n), self.pad_id, dtype=np.int64)
        types = np.zeros((len(batch), n), dtype=np.int64)
        mask = np.zeros((len(batch), n), dtype=np.int64)
        labels = np.full((len(batch), n), IGNORE, dtype=np.int64)
        for i, r in enumerate(batch):
            row = np.asarray(r["input_ids"], dtype=np.int64)
            special = np.isin(row, self.special_ids)
            starts = ~self.continuation[row] if self.whole_word else None
            masked, lab = mask_tokens(row, special, rng, self.mask_id, self.vocab_size, self.rate, starts)
            k = len(row)
            ids[i, :k], labels[i, :k], types[i, :k], mask[i, :k] = masked, lab, r["token_type_ids"], 1
        out = {
            "input_ids": torch.from_numpy(ids),
            "token_type_ids": torch.from_numpy(types),
            "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(labels),
        }
        if self.nsp:
            out["next_sentence_label"] = torch.tensor([r["next_sentence_label"] for r in batch])
        return out
