"""``finetune``: a fine-tuning run on one of fastbert's heads with transformers' Trainer (which does the loop,
evaluation, checkpoints, ``--resume`` and bf16 autocast). The task family (fastbert/tasks/sequence.py for
classify, pair and regress; tagging.py for tag; qa.py for qa) reads and tokenizes the data and names the head,
the label set and the metrics.

The output folder (fastbert/tasks/run.py: written whole or not at all) holds the best model (by the family's
metric on the validation file, else the last), its tokenizer, ``metrics.json`` (the final validation metrics, or
the training metrics without a validation file) and ``log.jsonl``. It loads in transformers' matching
``BertFor*`` class and in fastbert's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..batch.files import InputError
from . import qa, sequence, tagging
from .run import RunOptions, build_trainer, new_output, require_trainer, train_into, training_arguments

TASKS = (*sequence.FAMILIES, *tagging.FAMILIES, *qa.FAMILIES)


def finetune(
    task: str,
    model: str,
    train: str,
    output: str,
    validation: str | None = None,
    text_field: str | None = None,
    pair_field: str | None = None,
    label_field: str | None = None,
    max_length: int = 128,
    stride: int | None = None,
    options: RunOptions | None = None,
) -> dict[str, float]:
    """Fine-tune the BERT folder ``model`` for ``task`` (classify, pair, regress, tag, qa) on ``train``; returns the
    metrics written to ``OUTPUT/metrics.json``. Fields default by family (text / text_pair / label; tag: tokens /
    tags); ``stride``: qa's window overlap in tokens (default max_length / 4). Raises InputError (naming file,
    line and field) for bad data."""
    opts = options or RunOptions()
    if task not in TASKS:
        raise InputError(f"task: unknown {task!r}; choose one of {', '.join(TASKS)}")
    opts.check()
    if max_length < 2:
        raise InputError(f"max length: expected at least 2, got {max_length}")
    out = new_output(output)
    require_trainer()
    from transformers import AutoConfig, AutoTokenizer, Trainer, set_seed

    from ..hf import heads

    set_seed(opts.seed)
    tokenizer = AutoTokenizer.from_pretrained(model)
    if task in tagging.FAMILIES:
        job = tagging.prepare(tokenizer, train, validation, max_length, text_field, label_field)
    elif task in qa.FAMILIES:
        job = qa.prepare(tokenizer, train, validation, max_length, stride)
    else:
        job = sequence.prepare(task, tokenizer, train, validation, max_length, text_field, pair_field, label_field)
    config = AutoConfig.from_pretrained(model)
    for key, value in job.config.items():  # set one by one: from_pretrained drops keys a config class does not know
        setattr(config, key, value)
    net = getattr(heads, job.head).from_pretrained(model, config=config)
    validating = job.validation is not None

    def make_trainer(checkpoints: Path) -> Trainer:
        args = training_arguments(
            checkpoints,
            opts,
            eval_strategy="epoch" if validating else "no",
            save_total_limit=2 if validating else 1,
            load_best_model_at_end=validating,
            metric_for_best_model=job.best if validating else None,
            greater_is_better=True,
        )
        return build_trainer(
            checkpoints,
            model=net,
            args=args,
            train_dataset=job.train,
            eval_dataset=job.validation,
            data_collator=job.collator,
            compute_metrics=job.metrics,
        )

    def finish(trainer: Trainer, result: Any, staging: Path) -> dict[str, float]:
        metrics = trainer.evaluate() if validating else dict(result.metrics)
        trainer.save_model(str(staging))
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(str(staging))
        return {k[len("eval_") :] if k.startswith("eval_") else k: float(v) for k, v in metrics.items()}

    return train_into(out, opts, make_trainer, finish)
