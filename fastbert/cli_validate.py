"""`fastbert validate`: transformers' BertModel and fastbert's on the same folder, output by output."""
from __future__ import annotations


def add_validate(sub, formatter, default_model) -> None:
    p = sub.add_parser("validate", help="compare fastbert with transformers on a model folder",
                       formatter_class=formatter)
    p.add_argument("--model", default=None)
    p.set_defaults(func=lambda args: 1)
