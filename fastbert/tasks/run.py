"""The run machinery that fine-tuning and pretraining share: the output folder, transformers' TrainingArguments
with the project's defaults, and a Trainer run whose output appears whole or not at all.

``OUTPUT`` must be new or empty. The run writes its checkpoints to ``OUTPUT.checkpoints`` (cleared first unless
resuming; removed when the run completes) and its result to ``OUTPUT.partial``, renamed to ``OUTPUT`` at the end;
on any failure ``OUTPUT.partial`` is removed, so nothing half-written is left under the output's name.
``log.jsonl`` holds every Trainer log line of the run (those before a resume included), ``loss.png`` their
curves (training loss, evaluation metrics; when matplotlib is installed), ``runs/`` the same as TensorBoard
events (when tensorboard is installed), ``metrics.json`` the metrics the caller computed.

Several processes: launched by ``torchrun`` (gloo on CPU, nccl on CUDA: transformers' Trainer and Accelerate
read torchrun's environment), every process runs the same function on the same data; each takes its share of
every global batch (``batch_size`` per process), and only the first process writes files.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..batch.files import InputError


@dataclass
class RunOptions:
    epochs: float = 3.0
    learning_rate: float = 5e-5
    batch_size: int = 32
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 42
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    bf16: bool = False
    resume: bool = False
    progress: bool = True

    def check(self) -> None:
        if self.epochs <= 0 or self.learning_rate <= 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise InputError("epochs, learning rate, batch size and gradient accumulation must be positive")
        if self.max_grad_norm < 0:
            raise InputError(f"max grad norm: expected >= 0 (0: no clipping), got {self.max_grad_norm}")
        if not 0 <= self.warmup_ratio < 1:
            raise InputError(f"warmup ratio: expected a share in [0, 1), got {self.warmup_ratio}")


def new_output(output: str) -> Path:
    out = Path(output)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise InputError(f"{output}: exists and is not empty; choose a new output folder")
    return out


def require_trainer() -> None:
    from transformers.utils import is_accelerate_available

    if not is_accelerate_available():
        raise InputError(
            'training runs on transformers\' Trainer, which needs accelerate: pip install "fastbert[train]"'
        )


def training_arguments(checkpoints: Path, opts: RunOptions, **overrides: Any) -> Any:
    """TrainingArguments: AdamW, linear warmup then linear decay, a checkpoint per epoch, logs every 10 steps."""
    import torch
    from transformers import TrainingArguments

    kwargs: dict[str, Any] = dict(
        output_dir=str(checkpoints),
        num_train_epochs=opts.epochs,
        learning_rate=opts.learning_rate,
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=max(opts.batch_size, 64),
        gradient_accumulation_steps=opts.grad_accum,
        max_grad_norm=opts.max_grad_norm,
        warmup_steps=opts.warmup_ratio,  # a float below 1: a share of the steps
        weight_decay=opts.weight_decay,
        lr_scheduler_type="linear",
        seed=opts.seed,
        data_seed=opts.seed,
        bf16=opts.bf16,
        save_strategy="epoch",
        save_total_limit=1,
        logging_steps=10,
        report_to=[],
        disable_tqdm=not opts.progress,
        use_cpu=not torch.cuda.is_available(),
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def build_trainer(checkpoints: Path, trainer_class: Any = None, **kwargs: Any) -> Any:
    """A Trainer (or ``trainer_class``) with the run's callbacks: TensorBoard events into ``checkpoints/runs``
    when tensorboard is installed. The model's loss is taken as it is, a mean over its batch: transformers'
    Trainer would otherwise hand BERT's heads ``num_items_in_batch`` (which they ignore), skip dividing the loss
    by the gradient accumulation steps and multiply it by the number of processes."""
    from transformers import Trainer
    from transformers.integrations import TensorBoardCallback, is_tensorboard_available

    callbacks = []
    if is_tensorboard_available():
        board = TensorBoardCallback()
        board.logging_dir = str(checkpoints / "runs")
        callbacks.append(board)
    trainer = (trainer_class or Trainer)(callbacks=callbacks, **kwargs)
    trainer.model_accepts_loss_kwargs = False
    return trainer


TRAINING_LOSSES = ("loss", "mlm_loss", "nsp_loss")  # logged by the Trainer (loss) and by pretraining
TRAINING_SCORES = ("mlm_accuracy", "nsp_accuracy")
NOT_METRICS = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def plot_losses(log: list[dict[str, Any]], path: Path) -> bool:
    """loss.png: the training losses by step (total, and masked LM / next sentence when logged), and beside them
    the training accuracies and every eval_* value by step, when matplotlib is installed (it is optional);
    returns whether it was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False

    def curve(key: str) -> list[tuple[int, float]]:
        return [(e["step"], e[key]) for e in log if isinstance(e.get(key), (int, float)) and "step" in e]

    losses = [k for k in TRAINING_LOSSES if curve(k)]
    evals = sorted({k for e in log for k in e if k.startswith("eval_") and k not in NOT_METRICS})
    scores = [k for k in (*TRAINING_SCORES, *evals) if curve(k)]
    fig, axes = plt.subplots(1, 2 if scores else 1, figsize=(10 if scores else 5, 3.5), squeeze=False)
    for k in losses:
        axes[0][0].plot(*zip(*curve(k)), label=k.replace("loss", "training loss") if k == "loss" else k)
    axes[0][0].set_xlabel("step")
    if losses:
        axes[0][0].legend()
    for k in scores:
        axes[0][1].plot(*zip(*curve(k)), marker="o" if k.startswith("eval_") else None, label=k)
    if scores:
        axes[0][1].set_xlabel("step")
        axes[0][1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def train_into(
    out: Path,
    opts: RunOptions,
    make_trainer: Callable[[Path], Any],
    finish: Callable[[Any, Any, Path], dict[str, float]],
) -> dict[str, float]:
    """make_trainer(checkpoints folder) -> Trainer; train it (resuming when asked and possible); then
    finish(trainer, train result, staging folder) saves what the output holds and returns its metrics (every
    process calls it; Trainer.save_model writes from the first process only, and so must anything else finish
    writes)."""
    main = int(os.environ.get("RANK", "0")) == 0  # torchrun's global rank; the Trainer joins the process group
    checkpoints = out.with_name(out.name + ".checkpoints")
    staging = out.with_name(out.name + ".partial")
    if main:
        if not opts.resume:
            shutil.rmtree(checkpoints, ignore_errors=True)  # another run's checkpoints must not mix with this one's
        shutil.rmtree(staging, ignore_errors=True)
    try:
        trainer = make_trainer(checkpoints)
        wait_for_everyone = trainer.accelerator.wait_for_everyone
        wait_for_everyone()
        has_checkpoint = checkpoints.is_dir() and any(p.name.startswith("checkpoint-") for p in checkpoints.iterdir())
        result = trainer.train(resume_from_checkpoint=True if opts.resume and has_checkpoint else None)
        if main:
            staging.mkdir(parents=True)
        wait_for_everyone()
        metrics = finish(trainer, result, staging)
        if main:
            (staging / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
            with open(staging / "log.jsonl", "w", encoding="utf-8") as f:
                for entry in trainer.state.log_history:
                    f.write(json.dumps(entry) + "\n")
            plot_losses(trainer.state.log_history, staging / "loss.png")
            if (checkpoints / "runs").is_dir():
                for callback in trainer.callback_handler.callbacks:
                    if getattr(callback, "tb_writer", None) is not None:
                        callback.tb_writer.close()
                shutil.copytree(checkpoints / "runs", staging / "runs")
            if out.exists():
                out.rmdir()  # empty (new_output checked)
            os.replace(staging, out)
    except BaseException:
        if main:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    wait_for_everyone()  # no process returns before the output is in place
    if main:
        shutil.rmtree(checkpoints, ignore_errors=True)  # the run is complete: nothing left to resume
    return metrics
