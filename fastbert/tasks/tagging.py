"""The token-tagging family (NER, chunking): words with one tag each.

    JSONL   {"tokens": ["John", "lives", ...], "tags": ["B-PER", "O", ...]}   (--text-field, --label-field)
    CoNLL   .conll / .bio / .iob / .txt: one word per line, its tag in the last column, a blank line between
            sentences; -DOCSTART- lines are skipped

The tag set is the training file's ("O" first, then sorted). Words are split into WordPiece tokens; the first
token of each word carries the word's tag and the rest, like the special tokens, are labelled -100 (ignored by
the loss), as transformers' token-classification recipe does. Words past ``max_length`` tokens are cut: they are
neither trained on nor scored, and ``predict`` gives them no tag (null).

Metrics: entity-level precision, recall and F1 over all sentences (a predicted entity counts when its type and
both ends match; entities read from IOB1, IOB2/BIO or IOBES tags as seqeval's default mode and conlleval read
them), and the accuracy of the scored words' tags.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..batch.files import InputError
from .prepared import Prepared

FAMILIES = ("tag",)
CONLL_SUFFIXES = (".conll", ".bio", ".iob", ".txt")
IGNORE = -100


@dataclass
class Sentences:
    words: list[list[str]]
    tags: list[list[str]] | None  # None: predict's input, read without tags
    wheres: list[str] = field(repr=False)  # "file:line" of each sentence's first word


def _jsonl(path: str, tokens_field: str, tags_field: str | None) -> Sentences:
    words, tags, wheres = [], [] if tags_field else None, []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            fields = [tokens_field] + ([tags_field] if tags_field else [])
            for name in fields:
                value = obj.get(name) if isinstance(obj, dict) else None
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise InputError(f"{where}: field {name!r} must be a list of strings")
            if tags_field and len(obj[tokens_field]) != len(obj[tags_field]):
                raise InputError(
                    f"{where}: {len(obj[tokens_field])} {tokens_field} but {len(obj[tags_field])} {tags_field}"
                )
            words.append(obj[tokens_field])
            if tags is not None:
                tags.append(obj[tags_field])
            wheres.append(where)
    return Sentences(words, tags, wheres)


def _conll(path: str, with_tags: bool) -> Sentences:
    words, tags, wheres = [], [] if with_tags else None, []
    cur_w: list[str] = []
    cur_t: list[str] = []
    start = ""

    def close() -> None:
        if cur_w:
            words.append(list(cur_w))
            if tags is not None:
                tags.append(list(cur_t))
            wheres.append(start)
        cur_w.clear()
        cur_t.clear()

    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            cols = line.split()
            if not cols or cols[0] == "-DOCSTART-":
                close()
                continue
            if with_tags and len(cols) < 2:
                raise InputError(f"{path}:{lineno}: one column ({cols[0]!r}); expected a word and its tag")
            if not cur_w:
                start = f"{path}:{lineno}"
            cur_w.append(cols[0])
            cur_t.append(cols[-1])
    close()
    return Sentences(words, tags, wheres)


def read_sentences(path: str, tokens_field: str = "tokens", tags_field: str | None = "tags") -> Sentences:
    """Every sentence of a JSONL or CoNLL file; tags_field=None reads words only (JSONL) or ignores the tag
    column (CoNLL)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such file")
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        out = _jsonl(path, tokens_field, tags_field)
    elif suffix in CONLL_SUFFIXES:
        out = _conll(path, tags_field is not None)
    else:
        raise InputError(f"{path}: tagging reads .jsonl (tokens + tags) or CoNLL ({', '.join(CONLL_SUFFIXES)})")
    if not out.words:
        raise InputError(f"{path}: no sentences")
    return out


def tag_names(train: Sentences) -> list[str]:
    names = sorted({t for sent in train.tags for t in sent} - {"O"})
    return ["O", *names]


# ---------------------------------------------------------------------------------------------- entities, metrics


def _split(tag: str) -> tuple[str, str]:
    """('B', 'PER') from 'B-PER'; ('O', '_') from 'O'."""
    return tag[:1], (tag[1:].split("-", 1)[-1] or "_")


def _ends(prev: str, tag: str, prev_type: str, type_: str) -> bool:
    return (
        prev in ("E", "S")
        or (prev in ("B", "I") and tag in ("B", "S", "O"))
        or (prev not in ("O", ".") and prev_type != type_)
    )


def _starts(prev: str, tag: str, prev_type: str, type_: str) -> bool:
    return (
        tag in ("B", "S")
        or (prev in ("E", "S", "O") and tag in ("E", "I"))
        or (tag not in ("O", ".") and prev_type != type_)
    )


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first, last) of each entity in one sentence's tags."""
    out, prev, prev_type, begin = [], "O", "", 0
    for i, t in enumerate([*tags, "O"]):
        tag, type_ = _split(t)
        if _ends(prev, tag, prev_type, type_):
            out.append((prev_type, begin, i - 1))
        if _starts(prev, tag, prev_type, type_):
            begin = i
        prev, prev_type = tag, type_
    return out


def tagging_metrics(pred: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level precision, recall, F1 (micro over all sentences) and word accuracy."""
    p = {(i, *e) for i, s in enumerate(pred) for e in entities(s)}
    g = {(i, *e) for i, s in enumerate(gold) for e in entities(s)}
    hit = len(p & g)
    precision = hit / len(p) if p else 0.0
    recall = hit / len(g) if g else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    words = sum(len(s) for s in gold)
    right = sum(a == b for ps, gs in zip(pred, gold) for a, b in zip(ps, gs))
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": right / words if words else 0.0}


# ---------------------------------------------------------------------------------------------- the run's inputs


def first_token_labels(word_ids: Sequence[int | None], word_labels: Sequence[int]) -> list[int]:
    """Per token: the word's label on its first token, IGNORE on the rest and on special tokens."""
    out, prev = [], None
    for w in word_ids:
        out.append(IGNORE if w is None or w == prev else word_labels[w])
        prev = w
    return out


def _tokenize(tokenizer: Any, s: Sentences, index: dict[str, int], max_length: int) -> list[dict[str, Any]]:
    enc = tokenizer(s.words, is_split_into_words=True, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    rows = []
    for i, (tags, where) in enumerate(zip(s.tags, s.wheres)):
        for t in tags:
            if t not in index:
                raise InputError(f"{where}: tag {t!r} is not in the training tags ({', '.join(index)})")
        row = {k: enc[k][i] for k in keys}
        row["labels"] = first_token_labels(enc.word_ids(i), [index[t] for t in tags])
        rows.append(row)
    return rows


def _metrics_fn(names: list[str]) -> Callable[[Any], dict[str, float]]:
    def compute(eval_pred: Any) -> dict[str, float]:
        logits, gold = eval_pred.predictions, eval_pred.label_ids
        logits = logits[0] if isinstance(logits, tuple) else logits
        pred = np.argmax(logits, -1)
        keep = gold != IGNORE
        p = [[names[k] for k in row[m]] for row, m in zip(pred, keep)]
        g = [[names[k] for k in row[m]] for row, m in zip(gold, keep)]
        return tagging_metrics(p, g)

    return compute


def prepare(
    tokenizer: Any,
    train: str,
    validation: str | None,
    max_length: int,
    tokens_field: str | None = None,
    tags_field: str | None = None,
) -> Prepared:
    from transformers import DataCollatorForTokenClassification

    tokens_field, tags_field = tokens_field or "tokens", tags_field or "tags"
    train_s = read_sentences(train, tokens_field, tags_field)
    val_s = read_sentences(validation, tokens_field, tags_field) if validation else None
    names = tag_names(train_s)
    index = {n: i for i, n in enumerate(names)}
    return Prepared(
        head="BertForTokenClassification",
        config={"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": index},
        train=_tokenize(tokenizer, train_s, index, max_length),
        validation=_tokenize(tokenizer, val_s, index, max_length) if val_s else None,
        collator=DataCollatorForTokenClassification(tokenizer),
        metrics=_metrics_fn(names),
        best="f1",
    )
