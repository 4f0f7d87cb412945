"""The `fastbert` command: `encode`, `validate`, `bench`, `info`, `finetune` and `predict`, `pretrain`.

Only argparse is imported up front; each subcommand imports what it needs when it runs, so `fastbert encode`
never pays for transformers (about 4 s of start-up here) and `--help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from . import bench, encode, finetune, info, pretrain, validate
from .common import PROG

__all__ = ["build_parser", "main"]

_format_warning = warnings.formatwarning


def one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """fastbert's own warnings ("fastbert: ...") as the one line they are, without the source line under them."""
    text = str(message)
    if text.startswith(f"{PROG}:"):
        return f"{text}\n"
    return _format_warning(message, category, filename, lineno, line)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="fastbert: a padding-free BERT on fused C++/CUDA kernels.",
        epilog="Run `fastbert <command> --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    for command in (encode, validate, bench, info, finetune, pretrain):
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = one_line_warning
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
