"""``predict``: run a fine-tuned model (a ``finetune`` output folder, or any BertForSequenceClassification,
BertForTokenClassification or BertForQuestionAnswering folder) over an input file and write one prediction per
input row, in input order.

Sequence models: rows of ``label`` and ``score`` (the predicted class's probability) for classification, of
``score`` (the predicted value) for regression, as JSONL, CSV or TSV by the output's suffix. Tagging models:
JSONL rows of ``tokens`` and ``tags`` (null for words cut by ``max_length``), from JSONL or CoNLL input
(fastbert/tasks/tagging.py). Question-answering models: JSONL rows of ``id``, ``answer`` and ``score`` from SQuAD
JSON or JSONL questions with contexts (fastbert/tasks/qa.py). Written under a temporary name and renamed when
complete. The model runs on ``device`` (CUDA when available, else the CPU).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..batch.files import InputError, Reader, atomic_output
from . import qa, tagging
from .sequence import FIELDS

_OUTPUT = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}
_HEADS = ("BertForSequenceClassification", "BertForTokenClassification", "BertForQuestionAnswering")


def _sequence_rows(net: Any, tokenizer: Any, rows: list, paired: bool, batch_size: int, max_length: int) -> list:
    import torch

    regression = net.config.problem_type == "regression" or net.config.num_labels == 1
    out = []
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            pairs = [p for _, p in chunk] if paired else None
            enc = tokenizer(
                [t for t, _ in chunk], pairs, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
            )
            logits = net(**enc.to(net.device)).logits.float().cpu()
            if regression:
                out += [{"score": float(v)} for v in logits.reshape(-1)]
            else:
                score, idx = logits.softmax(-1).max(-1)
                out += [{"label": net.config.id2label[int(k)], "score": float(s)} for k, s in zip(idx, score)]
    return out


def _tag_rows(net: Any, tokenizer: Any, words: list[list[str]], batch_size: int, max_length: int) -> list:
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(words), batch_size):
            chunk = words[i : i + batch_size]
            enc = tokenizer(
                chunk,
                is_split_into_words=True,
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            pred = net(**enc.to(net.device)).logits.argmax(-1).cpu()
            for r, sentence in enumerate(chunk):
                tags: list[str | None] = [None] * len(sentence)
                prev = None
                for j, w in enumerate(enc.word_ids(r)):
                    if w is not None and w != prev:  # a word's first token carries its tag
                        tags[w] = net.config.id2label[int(pred[r, j])]
                    prev = w
                out.append({"tokens": sentence, "tags": tags})
    return out


def predict(
    model: str,
    input_file: str,
    output: str,
    text_field: str | None = None,
    pair_field: str | None = None,
    batch_size: int = 64,
    max_length: int = 128,
    device: str | None = None,
) -> int:
    """Predictions for every row of ``input_file`` into ``output``; returns the number of rows. The fields
    default to those the model was fine-tuned on (``finetune`` records them in its config: a pair model reads
    two texts), else text (sequence models) or tokens (tagging models). ``device``: where the model runs
    (default: CUDA when available, else the CPU)."""
    fmt = _OUTPUT.get(Path(output).suffix.lower())
    if fmt is None:
        raise InputError(f"{output}: write predictions to .jsonl, .csv or .tsv")
    if batch_size < 1:
        raise InputError(f"batch size: expected >= 1, got {batch_size}")
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from ..hf import heads

    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise InputError(f"{model}: not a model folder ({exc})") from None
    try:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise InputError(f"device: {device!r} cannot run here ({exc})") from None
    architectures = config.architectures or []
    fields = getattr(config, FIELDS, None) or {}
    text_field, pair_field = text_field or fields.get("text"), pair_field or fields.get("pair")
    kind = next((a for a in architectures if a in _HEADS), "BertForSequenceClassification")
    if kind != "BertForSequenceClassification" and fmt != "jsonl":
        raise InputError(f"{output}: a {kind} model's predictions are written to .jsonl")
    if kind == "BertForTokenClassification":
        sentences = tagging.read_sentences(input_file, text_field or "tokens", None)
    elif kind == "BertForQuestionAnswering":
        questions = qa.read_questions(input_file, with_answers=False)
    else:
        rows = list(Reader(input_file, text_field=text_field or "text", pair_field=pair_field))
    tokenizer = AutoTokenizer.from_pretrained(model)
    net = getattr(heads, kind).from_pretrained(model).eval().to(device)
    if kind == "BertForTokenClassification":
        results = _tag_rows(net, tokenizer, sentences.words, batch_size, max_length)
    elif kind == "BertForQuestionAnswering":
        results = qa.answer_rows(net, tokenizer, questions, batch_size, max_length)
    else:
        results = _sequence_rows(net, tokenizer, rows, pair_field is not None, batch_size, max_length)
    with atomic_output(output) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            if fmt == "jsonl":
                for r in results:
                    f.write(json.dumps(r) + "\n")
            else:
                fields = list(results[0]) if results else ["score"]
                writer = csv.DictWriter(f, fieldnames=fields, delimiter="\t" if fmt == "tsv" else ",")
                writer.writeheader()
                writer.writerows(results)
    return len(results)
