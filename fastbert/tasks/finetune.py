"""``finetune``: a sequence-level fine-tuning run on fastbert's BertForSequenceClassification with transformers'
Trainer (which does the loop, evaluation, checkpoints, ``--resume`` and bf16 autocast).

The output folder is complete when the run ends, and only then: the best model (by the family's metric on the
validation file, else the last), its tokenizer, ``metrics.json`` (the final validation metrics, or the
training metrics without a validation file) and ``log.jsonl`` (every Trainer log line). It is written under a
temporary name and renamed into place, so an interrupted run leaves its checkpoints (in ``OUTPUT.checkpoints``,
for ``resume=True``; removed when a run completes) but never a half-written output folder. The folder loads in
transformers' ``BertForSequenceClassification`` and in fastbert's.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..batch.files import InputError
from . import sequence

TASKS = sequence.FAMILIES


def _tokenize(tokenizer: Any, ex: sequence.Examples, labels: list, max_length: int) -> list[dict[str, Any]]:
    enc = tokenizer(ex.texts, ex.pairs, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [dict({k: enc[k][i] for k in keys}, labels=labels[i]) for i in range(len(labels))]


def _labels(task: str, ex: sequence.Examples, names: list[str] | None, label_field: str) -> list:
    return sequence.numbers(ex, label_field) if task == "regress" else sequence.class_ids(ex, names, label_field)


def _metrics_fn(task: str, n_labels: int) -> Callable[[Any], dict[str, float]]:
    def compute(eval_pred: Any) -> dict[str, float]:
        logits, gold = eval_pred.predictions, eval_pred.label_ids
        logits = logits[0] if isinstance(logits, tuple) else logits
        if task == "regress":
            return sequence.regression_metrics(logits.reshape(-1), gold)
        return sequence.classification_metrics(np.argmax(logits, -1), gold, n_labels, binary_f1=task == "pair")

    return compute


def finetune(
    task: str,
    model: str,
    train: str,
    output: str,
    validation: str | None = None,
    text_field: str = "text",
    pair_field: str | None = None,
    label_field: str = "label",
    epochs: float = 3.0,
    learning_rate: float = 5e-5,
    batch_size: int = 32,
    max_length: int = 128,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    seed: int = 42,
    bf16: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, float]:
    """Fine-tune the BERT folder ``model`` for ``task`` (classify, pair, regress) on ``train``; returns the metrics
    written to ``OUTPUT/metrics.json``. Raises InputError (naming file, line and field) for bad data."""
    if task not in TASKS:
        raise InputError(f"task: unknown {task!r}; choose one of {', '.join(TASKS)}")
    if epochs <= 0 or learning_rate <= 0 or batch_size < 1 or max_length < 2:
        raise InputError("epochs, learning rate, batch size and max length must be positive (max length >= 2)")
    out = Path(output)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise InputError(f"{output}: exists and is not empty; choose a new output folder")
    train_ex = sequence.read_examples(train, task, text_field, pair_field, label_field)
    val_ex = sequence.read_examples(validation, task, text_field, pair_field, label_field) if validation else None
    names = None if task == "regress" else sequence.label_names(train_ex, train)
    train_labels = _labels(task, train_ex, names, label_field)
    val_labels = _labels(task, val_ex, names, label_field) if val_ex else None

    import torch
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments, set_seed
    from transformers.utils import is_accelerate_available

    if not is_accelerate_available():
        raise InputError(
            'fine-tuning runs on transformers\' Trainer, which needs accelerate: pip install "fastbert[finetune]"'
        )

    from ..hf.heads import BertForSequenceClassification

    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model)
    n_labels = 1 if task == "regress" else len(names)
    kwargs: dict[str, Any] = {"num_labels": n_labels}
    if task == "regress":
        kwargs["problem_type"] = "regression"
    else:
        kwargs["id2label"] = dict(enumerate(names))
        kwargs["label2id"] = {n: i for i, n in enumerate(names)}
        kwargs["problem_type"] = "single_label_classification"
    net = BertForSequenceClassification.from_pretrained(model, **kwargs)
    train_ds = _tokenize(tokenizer, train_ex, train_labels, max_length)
    val_ds = _tokenize(tokenizer, val_ex, val_labels, max_length) if val_ex else None

    checkpoints = out.with_name(out.name + ".checkpoints")
    best = sequence.BEST_METRIC[task]
    args = TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=max(batch_size, 64),
        warmup_steps=warmup_ratio,  # a float below 1: a share of the steps
        weight_decay=weight_decay,
        lr_scheduler_type="linear",
        seed=seed,
        data_seed=seed,
        bf16=bf16,
        eval_strategy="epoch" if val_ds else "no",
        save_strategy="epoch",
        save_total_limit=2 if val_ds else 1,
        load_best_model_at_end=bool(val_ds),
        metric_for_best_model=best if val_ds else None,
        greater_is_better=True,
        logging_steps=10,
        report_to=[],
        disable_tqdm=not progress,
        use_cpu=not torch.cuda.is_available(),
    )
    staging = out.with_name(out.name + ".partial")
    if not resume:
        shutil.rmtree(checkpoints, ignore_errors=True)  # another run's checkpoints must not mix with this one's
    shutil.rmtree(staging, ignore_errors=True)
    try:
        trainer = Trainer(
            model=net,
            args=args,
            train_dataset=train_ds,
            eval_dataset=val_ds,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=_metrics_fn(task, n_labels),
        )
        has_checkpoint = checkpoints.is_dir() and any(p.name.startswith("checkpoint-") for p in checkpoints.iterdir())
        result = trainer.train(resume_from_checkpoint=True if resume and has_checkpoint else None)
        metrics = trainer.evaluate() if val_ds else dict(result.metrics)
        metrics = {k[len("eval_") :] if k.startswith("eval_") else k: float(v) for k, v in metrics.items()}
        staging.mkdir(parents=True)
        trainer.save_model(str(staging))
        tokenizer.save_pretrained(str(staging))
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        # every log line of the run, those before a --resume included
        with open(staging / "log.jsonl", "w", encoding="utf-8") as f:
            for entry in trainer.state.log_history:
                f.write(json.dumps(entry) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(checkpoints, ignore_errors=True)  # the run is complete: nothing left to resume
    return metrics
