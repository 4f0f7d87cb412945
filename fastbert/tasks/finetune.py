"""``finetune``: a fine-tuning run on one of fastbert's heads with transformers' Trainer (which does the loop,
evaluation, checkpoints, ``--resume`` and bf16 autocast). The task family (fastbert/tasks/sequence.py for
classify, pair and regress; tagging.py for tag; qa.py for qa) reads and tokenizes the data and names the head,
the label set and the metrics.

The output folder is complete when the run ends, and only then: the best model (by the family's metric on the
validation file, else the last), its tokenizer, ``metrics.json`` (the final validation metrics, or the
training metrics without a validation file) and ``log.jsonl`` (every Trainer log line). It is written under a
temporary name and renamed into place, so an interrupted run leaves its checkpoints (in ``OUTPUT.checkpoints``,
for ``resume=True``; removed when a run completes) but never a half-written output folder. The folder loads in
transformers' matching ``BertFor*`` class and in fastbert's.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..batch.files import InputError
from . import qa, sequence, tagging

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
    epochs: float = 3.0,
    learning_rate: float = 5e-5,
    batch_size: int = 32,
    max_length: int = 128,
    stride: int | None = None,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    seed: int = 42,
    bf16: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, float]:
    """Fine-tune the BERT folder ``model`` for ``task`` (classify, pair, regress, tag, qa) on ``train``; returns the
    metrics written to ``OUTPUT/metrics.json``. Fields default by family (text / text_pair / label; tag: tokens /
    tags); ``stride``: qa's window overlap in tokens (default max_length / 4). Raises InputError (naming file,
    line and field) for bad data."""
    if task not in TASKS:
        raise InputError(f"task: unknown {task!r}; choose one of {', '.join(TASKS)}")
    if epochs <= 0 or learning_rate <= 0 or batch_size < 1 or max_length < 2:
        raise InputError("epochs, learning rate, batch size and max length must be positive (max length >= 2)")
    out = Path(output)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise InputError(f"{output}: exists and is not empty; choose a new output folder")
    import torch
    from transformers import AutoConfig, AutoTokenizer, Trainer, TrainingArguments, set_seed
    from transformers.utils import is_accelerate_available

    from ..hf import heads

    if not is_accelerate_available():
        raise InputError(
            'fine-tuning runs on transformers\' Trainer, which needs accelerate: pip install "fastbert[finetune]"'
        )
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model)
    if task in tagging.FAMILIES:
        job = tagging.prepare(tokenizer, train, validation, max_length, text_field, label_field)
    elif task in qa.FAMILIES:
        job = qa.prepare(tokenizer, train, validation, max_length, stride)
    else:
        job = sequence.prepare(task, tokenizer, train, validation, max_length, text_field, pair_field, label_field)
    config = AutoConfig.from_pretrained(model, **job.config)  # keys the head does not know are kept on the config
    net = getattr(heads, job.head).from_pretrained(model, config=config)
    train_ds, val_ds = job.train, job.validation

    checkpoints = out.with_name(out.name + ".checkpoints")
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
        metric_for_best_model=job.best if val_ds else None,
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
            data_collator=job.collator,
            compute_metrics=job.metrics,
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
