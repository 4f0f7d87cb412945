"""``predict``: run a fine-tuned sequence model (a ``finetune`` output folder, or any BertForSequenceClassification
folder) over an input file (``input_file``) and write one prediction per input row, in input order.

Output (by the output's suffix): JSONL or CSV/TSV rows of ``label`` and ``score`` (the predicted class's
probability) for classification, ``score`` (the predicted value) for regression. Written under a temporary name
and renamed when complete (fastbert.batch.files.atomic_output).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..batch.files import InputError, Reader, atomic_output

_OUTPUT = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}


def predict(
    model: str,
    input_file: str,
    output: str,
    text_field: str = "text",
    pair_field: str | None = None,
    batch_size: int = 64,
    max_length: int = 128,
) -> int:
    """Predictions for every row of ``input_file`` into ``output``; returns the number of rows."""
    fmt = _OUTPUT.get(Path(output).suffix.lower())
    if fmt is None:
        raise InputError(f"{output}: write predictions to .jsonl, .csv or .tsv")
    if batch_size < 1:
        raise InputError(f"batch size: expected >= 1, got {batch_size}")
    rows = list(Reader(input_file, text_field=text_field, pair_field=pair_field))

    import torch
    from transformers import AutoTokenizer

    from ..hf.heads import BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(model)
    net = BertForSequenceClassification.from_pretrained(model).eval()
    regression = net.config.problem_type == "regression" or net.config.num_labels == 1
    id2label = net.config.id2label
    results = []
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            pairs = [p for _, p in chunk] if pair_field else None
            enc = tokenizer(
                [t for t, _ in chunk], pairs, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
            )
            logits = net(**enc).logits.float()
            if regression:
                results += [{"score": float(v)} for v in logits.reshape(-1)]
            else:
                prob = logits.softmax(-1)
                score, idx = prob.max(-1)
                results += [{"label": id2label[int(k)], "score": float(s)} for k, s in zip(idx, score)]
    with atomic_output(output) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            if fmt == "jsonl":
                for r in results:
                    f.write(json.dumps(r) + "\n")
            else:
                writer = csv.DictWriter(
                    f, fieldnames=list(results[0]) if results else ["score"], delimiter="\t" if fmt == "tsv" else ","
                )
                writer.writeheader()
                writer.writerows(results)
    return len(results)
