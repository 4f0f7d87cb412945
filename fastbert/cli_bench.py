"""`fastbert bench`: the side-by-side benchmark (fastbert/bench.py) as a command."""
from __future__ import annotations


def add_bench(sub, formatter) -> None:
    p = sub.add_parser("bench", help="benchmark fastbert against HF and others", formatter_class=formatter)
    p.set_defaults(func=lambda args: 1)
