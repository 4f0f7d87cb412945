"""What a task family (fastbert/tasks/sequence.py, fastbert/tasks/tagging.py) hands the fine-tuning run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Prepared:
    head: str  # the fastbert.hf.heads class to fine-tune, e.g. "BertForSequenceClassification"
    config: dict[str, Any]  # config values: num_labels, id2label, label2id, problem_type, a family's own
    train: list[dict[str, Any]]  # tokenized rows: input_ids, attention_mask, token_type_ids, labels
    validation: list[dict[str, Any]] | None
    collator: Any  # a transformers data collator for these rows
    metrics: Callable[[Any], dict[str, float]]  # Trainer's compute_metrics
    best: str  # the validation metric that picks the kept checkpoint (greater is better)
