"""Training recipes run on transformers' Trainer twice: once on transformers' own BERT head, once on fastbert's,
from the same weights with the same seed, data order and batch size (library code behind
benchmarks/bench_recipes.py and tests/tasks/test_training_parity.py).

Fine-tuning (classify, pair, regress, tag, qa): the family's data, collator, head and metrics come from
``fastbert.tasks.sequence.prepare`` / ``tagging.prepare`` / ``qa.prepare``, as ``fastbert finetune`` uses them. The
transformers side is ``transformers.<Head>.from_pretrained`` with its default attention implementation (what a
user runs), the fastbert side ``fastbert.hf.heads.<Head>``; both then load one starting state dict (so the newly
initialised classifier is the same), with dropout off, so the two sides compute the same function and their loss
curves (``logging_steps=1``) should agree to rounding.

Pretraining (masked LM + next sentence) compares the two recipes a user would run, on the same pairs
(``fastbert.tasks.pretrain_data.make_pairs``), batch size, ``max_seq_length`` and initial weights: transformers'
``BertForPreTraining`` + ``DataCollatorForLanguageModeling(mlm_probability=0.15)`` + the Trainer's default
(random) sampler, against fastbert's ``BertForPreTraining(config, sparse_prediction=True)`` +
``PretrainingCollator`` + ``train_sampling_strategy="group_by_length"``, as ``fastbert pretrain`` runs it. The
masks and batches differ, so the two loss curves are alike in level, not step by step; speed is compared in real
(non-padding) tokens per second.

Timing: a TrainerCallback takes the wall time of each optimizer step from one step's end to the next (so it
holds fetching and collating the batch, forward, backward, optimizer, scheduler and the step's logging), and a
forward pre-hook counts each training batch's real and padded tokens. The first ``warmup`` steps (lazy
initialisation: optimizer state, packed weights, kernel primitives) are dropped.
"""

from __future__ import annotations

import copy
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import TrainerCallback

from ..hf import heads
from ..tasks import pretrain_data, qa, sequence, tagging
from ..tasks.prepared import Prepared
from ..tasks.pretrain import new_model_config
from ..tasks.run import RunOptions, training_arguments

FAMILIES = ("classify", "pair", "regress", "tag", "qa")
SIDES = ("transformers", "fastbert")
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": None}


@dataclass
class RunResult:
    """One Trainer run: what it logged, what it scored and how long its steps took."""

    side: str
    losses: list[float]  # the training loss of every step (logging_steps=1), in order
    metrics: dict[str, float]  # the final evaluation's metrics, "eval_" prefix dropped (empty without validation)
    step_s: list[float]  # wall time of each timed step (warm-up dropped), seconds
    tokens: list[int]  # real (non-padding) tokens of each timed step's batch
    padded: list[int]  # batch x length of each timed step's batch

    def median_step_s(self) -> float:
        return statistics.median(self.step_s) if self.step_s else float("nan")

    def tokens_per_s(self) -> float:
        """Real tokens over the wall time of the timed steps."""
        total = sum(self.step_s)
        return sum(self.tokens) / total if total > 0 else float("nan")

    def padding_share(self) -> float:
        return 1 - sum(self.tokens) / sum(self.padded) if sum(self.padded) else float("nan")


class StepTimer(TrainerCallback):
    """Records each optimizer step's wall time (end of the previous step, or the start of training, to this
    step's end) and, through a forward pre-hook on ``model``, the real and padded tokens of the batches the step
    trained on (evaluation forwards, in eval mode, are not counted)."""

    def __init__(self, model: nn.Module):
        self.step_s: list[float] = []
        self.tokens: list[int] = []
        self.padded: list[int] = []
        self._last = 0.0
        self._pending = [0, 0]
        self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if not module.training:
            return
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        if mask is not None:
            self._pending[0] += int(mask.sum())
            self._pending[1] += mask.numel()
        elif ids is not None:
            self._pending[0] += ids.numel()
            self._pending[1] += ids.numel()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = time.perf_counter()
        self.step_s.append(now - self._last)
        self._last = now
        self.tokens.append(self._pending[0])
        self.padded.append(self._pending[1])
        self._pending = [0, 0]

    def remove(self) -> None:
        self._handle.remove()


def _arguments(
    output_dir: str,
    steps: int,
    batch_size: int,
    bf16: bool,
    seed: int,
    learning_rate: float,
    **overrides: Any,
) -> Any:
    """TrainingArguments as ``fastbert finetune`` / ``pretrain`` make them (fastbert.tasks.run), for a fixed
    number of steps, a loss logged every step and nothing saved."""
    opts = RunOptions(
        epochs=1, learning_rate=learning_rate, batch_size=batch_size, seed=seed, bf16=bf16, progress=False
    )
    kwargs: dict[str, Any] = dict(max_steps=steps, logging_steps=1, save_strategy="no", use_cpu=True, report_to=[])
    kwargs.update(overrides)
    return training_arguments(Path(output_dir), opts, **kwargs)


def _train(
    model: nn.Module,
    side: str,
    args: Any,
    train: Sequence[Any],
    collator: Any,
    warmup: int,
    validation: Sequence[Any] | None = None,
    compute_metrics: Any = None,
) -> RunResult:
    """Train ``model`` with ``args`` under a StepTimer, then evaluate once on ``validation`` (when given)."""
    timer = StepTimer(model)
    try:
        trainer = transformers.Trainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=validation,
            data_collator=collator,
            compute_metrics=compute_metrics,
            callbacks=[timer],
        )
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # no log lines on stdout
        trainer.train()
        metrics: dict[str, float] = {}
        if validation is not None:
            raw = trainer.evaluate()
            metrics = {
                k[len("eval_") :]: float(v)
                for k, v in raw.items()
                if k.startswith("eval_")
                and k not in ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
            }
    finally:
        timer.remove()
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e and "step" in e]
    return RunResult(
        side=side,
        losses=losses,
        metrics=metrics,
        step_s=timer.step_s[warmup:],
        tokens=timer.tokens[warmup:],
        padded=timer.padded[warmup:],
    )


# ---------------------------------------------------------------------------------------------- fine-tuning


@dataclass
class FinetuneJob:
    """A fine-tuning family's data and starting point, shared by both sides."""

    family: str
    model_dir: str
    prepared: Prepared
    config: Any  # BertConfig: the family's label set, dropout off
    initial: dict[str, torch.Tensor] = field(repr=False)  # the starting weights both sides load


def prepare_finetune(
    family: str, model_dir: str, train: str, validation: str | None, max_length: int = 128, seed: int = 0
) -> FinetuneJob:
    """Read and tokenize a family's files (as ``fastbert finetune`` does) and draw the starting weights: the
    checkpoint's encoder and a classifier initialised by transformers' head under ``seed``."""
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {', '.join(FAMILIES)}, got {family!r}")
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if family in tagging.FAMILIES:
        prepared = tagging.prepare(tokenizer, train, validation, max_length)
    elif family in qa.FAMILIES:
        prepared = qa.prepare(tokenizer, train, validation, max_length)
    else:
        prepared = sequence.prepare(family, tokenizer, train, validation, max_length)
    config = AutoConfig.from_pretrained(model_dir, **prepared.config, **NO_DROPOUT)
    torch.manual_seed(seed)
    ref = getattr(transformers, prepared.head).from_pretrained(model_dir, config=copy.deepcopy(config))
    initial = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    return FinetuneJob(family, model_dir, prepared, config, initial)


def build_head(job: FinetuneJob, side: str, pad_outputs: str = "zero") -> nn.Module:
    """The family's head on ``side``: ``transformers.<Head>`` (default attention implementation) or
    ``fastbert.hf.heads.<Head>`` (with ``pad_outputs``), holding ``job.initial``."""
    if side not in SIDES:
        raise ValueError(f"side: expected one of {', '.join(SIDES)}, got {side!r}")
    config = copy.deepcopy(job.config)
    if side == "transformers":
        model = getattr(transformers, job.prepared.head).from_pretrained(job.model_dir, config=config)
    else:
        model = getattr(heads, job.prepared.head).from_pretrained(job.model_dir, config=config, pad_outputs=pad_outputs)
    model.load_state_dict(job.initial)
    return model.train()


def run_finetune(
    job: FinetuneJob,
    side: str,
    steps: int,
    batch_size: int,
    bf16: bool = False,
    seed: int = 0,
    learning_rate: float = 1e-4,
    warmup: int = 2,
    pad_outputs: str = "zero",
) -> RunResult:
    """``steps`` optimizer steps of the family's Trainer run on ``side`` (AdamW, linear warmup and decay, as
    ``fastbert finetune``), then one evaluation on the validation rows. ``pad_outputs`` (fastbert's side):
    "hf" makes fastbert's question-answering head compute pad positions' logits, which transformers' QA loss
    includes (see fastbert.hf.heads); "zero", the default, leaves them out of the loss."""
    model = build_head(job, side, pad_outputs)
    with tempfile.TemporaryDirectory(prefix="fastbert-recipe-") as tmp:
        args = _arguments(tmp, steps, batch_size, bf16, seed, learning_rate)
        p = job.prepared
        return _train(model, side, args, p.train, p.collator, warmup, p.validation, p.metrics)


def max_loss_difference(a: RunResult, b: RunResult) -> float:
    """The largest |difference| between two runs' losses at the same step."""
    if len(a.losses) != len(b.losses):
        raise ValueError(f"the runs logged {len(a.losses)} and {len(b.losses)} losses")
    return max((abs(x - y) for x, y in zip(a.losses, b.losses)), default=0.0)


# ---------------------------------------------------------------------------------------------- pretraining


@dataclass
class PretrainJob:
    """Pretraining pairs, tokenizer, model config and initial weights, shared by both recipes."""

    tokenizer: Any
    config: Any  # BertConfig of the preset, vocabulary of the tokenizer
    rows: list[dict[str, Any]]  # input_ids, token_type_ids, next_sentence_label
    max_seq_length: int
    initial: dict[str, torch.Tensor] = field(repr=False)


def prepare_pretrain(
    documents: Sequence[Sequence[str]],
    tokenizer_dir: str,
    preset: str = "small",
    max_seq_length: int = 128,
    seed: int = 0,
    max_pairs: int | None = None,
) -> PretrainJob:
    """Pairs from ``documents`` (each a list of sentences) with ``tokenizer_dir``'s tokenizer, made and shuffled
    as ``fastbert pretrain`` makes them (the first ``max_pairs`` of them, when given); a new model of ``preset``
    (fastbert.tasks.pretrain.PRESETS) or a config.json, initialised by transformers under ``seed``.

    transformers' length grouping sorts random megabatches of ``min(pairs / (4 x batch size), 50)`` batches:
    with ``max_pairs = 4 x batch size x steps`` a run of ``steps`` steps is one megabatch, a random sample of the
    pairs sorted by length, as in a long run (fewer pairs leave the batches barely grouped)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    sentences = [s for d in documents for s in d]
    ids = tokenizer(sentences, add_special_tokens=False)["input_ids"]
    tokenized, k = [], 0
    for d in documents:
        tokenized.append([t for t in ids[k : k + len(d)] if t])
        k += len(d)
    rng = random.Random(seed)
    pairs = pretrain_data.make_pairs(tokenized, tokenizer.cls_token_id, tokenizer.sep_token_id, max_seq_length, rng)
    rows = [
        {"input_ids": p.input_ids, "token_type_ids": p.token_type_ids, "next_sentence_label": p.next_sentence_label}
        for p in pairs
    ]
    rng.shuffle(rows)
    if max_pairs is not None:
        if len(rows) < max_pairs:
            raise ValueError(f"documents: {len(rows)} pairs, fewer than max_pairs={max_pairs}")
        rows = rows[:max_pairs]
    config = new_model_config(preset, len(tokenizer), max_seq_length)
    torch.manual_seed(seed)
    ref = transformers.BertForPreTraining(copy.deepcopy(config))
    initial = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    return PretrainJob(tokenizer, config, rows, max_seq_length, initial)


def run_pretrain(
    job: PretrainJob,
    side: str,
    steps: int,
    batch_size: int,
    bf16: bool = False,
    seed: int = 0,
    learning_rate: float = 1e-4,
    warmup: int = 2,
) -> RunResult:
    """``steps`` steps of the side's pretraining recipe (see the module's docstring) from ``job.initial``."""
    if side not in SIDES:
        raise ValueError(f"side: expected one of {', '.join(SIDES)}, got {side!r}")
    config = copy.deepcopy(job.config)
    with tempfile.TemporaryDirectory(prefix="fastbert-recipe-") as tmp:
        if side == "transformers":
            model = transformers.BertForPreTraining(config)
            collator = transformers.DataCollatorForLanguageModeling(job.tokenizer, mlm_probability=0.15)
            args = _arguments(tmp, steps, batch_size, bf16, seed, learning_rate, remove_unused_columns=False)
        else:
            model = heads.BertForPreTraining(config, sparse_prediction=True)
            collator = pretrain_data.PretrainingCollator(job.tokenizer)
            args = _arguments(
                tmp,
                steps,
                batch_size,
                bf16,
                seed,
                learning_rate,
                remove_unused_columns=False,
                train_sampling_strategy="group_by_length",
            )
        model.load_state_dict(job.initial)
        return _train(model.train(), side, args, job.rows, collator, warmup)
