"""The extractive question-answering family (SQuAD 1.1 and 2.0): a question, a context, and the answer's span.

    SQuAD JSON   {"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers": [{"text",
                 "answer_start"}], "is_impossible"}]}]}]}
    JSONL        {"id", "question", "context", "answers": {"text": [...], "answer_start": [...]}} (the datasets
                 library's layout) or "answers": [{"text", "answer_start"}]; an empty list: no answer

Long contexts are split into windows of ``max_length`` tokens overlapping by ``stride``; a window that holds the
(first) answer is trained to point at it, others at [CLS] (no answer in this window). Decoding takes, over every
window of an example, the ``n_best`` highest start and end logits inside the context, keeps spans of at most
``max_answer_length`` tokens, and answers with the best start + end score; when the training data has
unanswerable questions (SQuAD 2.0), the answer is empty if the [CLS] score beats it. Metrics: exact match and F1
with SQuAD's normalization (lower case, no punctuation or articles, single spaces), the best over the gold
answers; a question without answers scores 1 only for an empty prediction.
"""

from __future__ import annotations

import collections
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..batch.files import InputError
from .prepared import Prepared

FAMILIES = ("qa",)
EMPTY_ANSWERS = "fastbert_qa_empty_answers"  # config key: the model was trained with unanswerable questions


@dataclass
class Question:
    id: str
    question: str
    context: str
    answers: list[tuple[str, int]]  # (text, character offset in context); empty: unanswerable
    where: str


def _answers(raw: Any, context: str, where: str) -> list[tuple[str, int]]:
    if isinstance(raw, dict):  # {"text": [...], "answer_start": [...]}
        texts, starts = raw.get("text", []), raw.get("answer_start", [])
        if len(texts) != len(starts):
            raise InputError(f"{where}: answers has {len(texts)} text(s) but {len(starts)} answer_start(s)")
        raw = [{"text": t, "answer_start": s} for t, s in zip(texts, starts)]
    if not isinstance(raw, list):
        raise InputError(f"{where}: field 'answers' must be a list or a {{text, answer_start}} object")
    out = []
    for a in raw:
        if not isinstance(a, dict) or not isinstance(a.get("text"), str) or not isinstance(a.get("answer_start"), int):
            raise InputError(f"{where}: each answer needs 'text' (a string) and 'answer_start' (an integer)")
        text, start = a["text"], a["answer_start"]
        if context[start : start + len(text)] != text:
            raise InputError(f"{where}: answer {text!r} is not at offset {start} of the context")
        out.append((text, start))
    return out


def read_questions(path: str, with_answers: bool = True) -> list[Question]:
    """Every question of a SQuAD JSON or JSONL file (answers checked against their contexts)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such file")
    out: list[Question] = []
    if p.suffix.lower() == ".json":
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
            raise InputError(f"{path}: expected SQuAD's layout, an object with a 'data' list")
        for a, article in enumerate(doc["data"]):
            for g, para in enumerate(article.get("paragraphs", [])):
                context = para.get("context")
                for q, qa in enumerate(para.get("qas", [])):
                    where = f"{path}: data[{a}].paragraphs[{g}].qas[{q}]"
                    if not isinstance(context, str) or not isinstance(qa.get("question"), str):
                        raise InputError(f"{where}: needs a 'question' and its paragraph a 'context' (strings)")
                    answers = _answers(qa.get("answers", []), context, where) if with_answers else []
                    out.append(Question(str(qa.get("id", len(out))), qa["question"], context, answers, where))
    elif p.suffix.lower() in (".jsonl", ".ndjson"):
        with open(p, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
                for name in ("question", "context") + (("answers",) if with_answers else ()):
                    if not isinstance(row, dict) or name not in row:
                        raise InputError(f"{where}: no field {name!r}")
                if not isinstance(row["question"], str) or not isinstance(row["context"], str):
                    raise InputError(f"{where}: 'question' and 'context' must be strings")
                answers = _answers(row["answers"], row["context"], where) if with_answers else []
                out.append(Question(str(row.get("id", len(out))), row["question"], row["context"], answers, where))
    else:
        raise InputError(f"{path}: question answering reads SQuAD JSON (.json) or JSONL (.jsonl)")
    if not out:
        raise InputError(f"{path}: no questions")
    return out


# ---------------------------------------------------------------------------------------------- SQuAD metrics


def normalize_answer(s: str) -> str:
    """SQuAD's normalization: lower case, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((collections.Counter(p) & collections.Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: dict[str, str], questions: list[Question]) -> dict[str, float]:
    """exact_match and f1 in percent, as SQuAD's evaluation script reports them."""
    em = f1 = 0.0
    for q in questions:
        pred = predictions.get(q.id, "")
        golds = [t for t, _ in q.answers] or [""]
        em += max(float(normalize_answer(pred) == normalize_answer(g)) for g in golds)
        f1 += max(_f1(pred, g) for g in golds)
    n = len(questions)
    return {"exact_match": 100 * em / n, "f1": 100 * f1 / n}


# ---------------------------------------------------------------------------------------------- windows, decoding


@dataclass
class Windows:
    rows: list[dict[str, Any]]  # model inputs (+ start/end positions when training)
    example: list[int]  # the question each window belongs to
    offsets: list[list[tuple[int, int] | None]]  # per token: its character span in the context, None outside it


def make_windows(tokenizer: Any, questions: list[Question], max_length: int, stride: int) -> Windows:
    enc = tokenizer(
        [q.question for q in questions],
        [q.context for q in questions],
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    rows, example, offsets = [], [], []
    for i, ex in enumerate(enc["overflow_to_sample_mapping"]):
        seq = enc.sequence_ids(i)
        offs = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][i], seq)]
        row = {k: enc[k][i] for k in keys}
        start = end = 0  # [CLS]: no answer in this window
        if questions[ex].answers:
            text, a0 = questions[ex].answers[0]
            a1 = a0 + len(text)
            inside = [j for j, o in enumerate(offs) if o is not None]
            if inside and offs[inside[0]][0] <= a0 and offs[inside[-1]][1] >= a1:
                start = next(j for j in inside if offs[j][1] > a0)
                end = next(j for j in reversed(inside) if offs[j][0] < a1)
        row["start_positions"], row["end_positions"] = start, end
        rows.append(row)
        example.append(int(ex))
        offsets.append(offs)
    return Windows(rows, example, offsets)


def decode(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    windows: Windows,
    questions: list[Question],
    n_best: int = 20,
    max_answer_length: int = 30,
    allow_empty: bool = False,
) -> dict[str, tuple[str, float]]:
    """{question id: (answer text, score)} from the windows' logits."""
    best: dict[int, tuple[float, str]] = {}
    null: dict[int, float] = {}
    for w, ex in enumerate(windows.example):
        s, e, offs = start_logits[w], end_logits[w], windows.offsets[w]
        n = len(offs)
        null[ex] = min(null.get(ex, np.inf), float(s[0] + e[0]))
        for i in np.argsort(s[:n])[::-1][:n_best]:
            if offs[i] is None:
                continue
            for j in np.argsort(e[:n])[::-1][:n_best]:
                if offs[j] is None or j < i or j - i + 1 > max_answer_length:
                    continue
                score = float(s[i] + e[j])
                if ex not in best or score > best[ex][0]:
                    best[ex] = (score, questions[ex].context[offs[i][0] : offs[j][1]])
    out = {}
    for ex, q in enumerate(questions):
        score, text = best.get(ex, (-np.inf, ""))
        if allow_empty and null.get(ex, -np.inf) > score:
            score, text = null[ex], ""
        out[q.id] = (text, score)
    return out


def prepare(
    tokenizer: Any,
    train: str,
    validation: str | None,
    max_length: int,
    stride: int | None = None,
    max_answer_length: int = 30,
) -> Prepared:
    """Windows, head and metrics of a qa run; stride defaults to a quarter of max_length."""
    from transformers import DataCollatorWithPadding

    stride = max_length // 4 if stride is None else stride
    if not 0 <= stride < max_length // 2:
        raise InputError(f"stride: expected 0 <= stride < max_length / 2 = {max_length // 2}, got {stride}")
    train_q = read_questions(train)
    val_q = read_questions(validation) if validation else None
    allow_empty = any(not q.answers for q in train_q)
    train_w = make_windows(tokenizer, train_q, max_length, stride)
    val_w = make_windows(tokenizer, val_q, max_length, stride) if val_q else None

    def metrics(eval_pred: Any) -> dict[str, float]:
        start, end = eval_pred.predictions[:2]
        answers = decode(start, end, val_w, val_q, max_answer_length=max_answer_length, allow_empty=allow_empty)
        return squad_metrics({k: t for k, (t, _) in answers.items()}, val_q)

    return Prepared(
        head="BertForQuestionAnswering",
        config={EMPTY_ANSWERS: allow_empty},
        train=train_w.rows,
        validation=val_w.rows if val_w else None,
        collator=DataCollatorWithPadding(tokenizer),
        metrics=metrics,
        best="f1",
    )


def answer_rows(net: Any, tokenizer: Any, questions: list[Question], batch_size: int, max_length: int) -> list[dict]:
    """predict's rows for a question-answering model: id, answer, score (start + end logit)."""
    import torch

    windows = make_windows(tokenizer, questions, max_length, max_length // 4)
    starts, ends = [], []
    with torch.inference_mode():
        for i in range(0, len(windows.rows), batch_size):
            chunk = [
                {k: v for k, v in r.items() if not k.endswith("_positions")} for r in windows.rows[i : i + batch_size]
            ]
            out = net(**tokenizer.pad(chunk, return_tensors="pt").to(net.device))
            starts += list(out.start_logits.float().cpu().numpy())
            ends += list(out.end_logits.float().cpu().numpy())
    allow_empty = bool(getattr(net.config, EMPTY_ANSWERS, False))
    answers = decode(starts, ends, windows, questions, allow_empty=allow_empty)
    return [{"id": q.id, "answer": answers[q.id][0], "score": answers[q.id][1]} for q in questions]
