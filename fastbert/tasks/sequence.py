"""The sequence-level task families: one text or a pair of texts with one label per row.

    classify   text (+ optional text_pair), a class label (strings or integers)  -> accuracy, macro-F1, MCC
    pair       text, text_pair, a class label                                    -> accuracy, F1
    regress    text (+ optional text_pair), a number                             -> Pearson, Spearman (MSE loss)

Rows come from fastbert.batch.files.Reader (CSV, TSV, JSONL, Parquet); a bad label is reported with the file,
the line and the field. Metrics are computed with numpy from their textbook definitions (the tests check them
against scikit-learn and scipy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..batch.files import InputError, Reader
from .prepared import Prepared

FAMILIES = ("classify", "pair", "regress")


@dataclass
class Examples:
    texts: list[str]
    pairs: list[str] | None
    labels: list  # raw values as read (class names or numbers)
    wheres: list[str] = field(repr=False)  # "file:line" of each row, for errors


FIELDS = "fastbert_fields"  # config key: the input fields the model was fine-tuned on


def read_examples(
    path: str, family: str, text_field: str = "text", pair_field: str | None = None, label_field: str = "label"
) -> Examples:
    """Every row of a labelled file. ``pair`` needs a second text (``pair_field``, default ``text_pair``)."""
    if family == "pair" and pair_field is None:
        pair_field = "text_pair"
    reader = Reader(path, text_field=text_field, pair_field=pair_field, extra_fields=(label_field,))
    texts, pairs, labels, wheres = [], [] if pair_field else None, [], []
    for text, pair, label in reader:
        if label is None or (isinstance(label, str) and not label.strip()):
            raise InputError(f"{reader.where}: field {label_field!r} is empty")
        texts.append(text)
        if pairs is not None:
            pairs.append(pair)
        labels.append(label)
        wheres.append(reader.where)
    if not texts:
        raise InputError(f"{path}: no rows")
    return Examples(texts, pairs, labels, wheres)


def _label_key(value: object) -> object:
    """Class labels as the file holds them: integers (3, "3", 3.0) as int, anything else as its string."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    for parse in (int, float):  # "3" and "3.0" as 3, as a JSON 3 or 3.0 is
        try:
            number = parse(text)
        except ValueError:
            continue
        if parse is int or number.is_integer():
            return int(number)
    return text.lower() if text.lower() in ("true", "false") else text


def label_names(train: Examples, path: str = "the training file") -> list[str]:
    """The label set of a classification training file, sorted (numbers numerically, then strings)."""
    keys = {_label_key(v) for v in train.labels}
    ints = sorted(k for k in keys if isinstance(k, int))
    strs = sorted(k for k in keys if not isinstance(k, int))
    if len(keys) < 2:
        raise InputError(f"{path}: one label value only ({next(iter(keys))!r}); need two")
    return [str(k) for k in ints + strs]


def class_ids(examples: Examples, names: list[str], label_field: str = "label") -> list[int]:
    index = {name: i for i, name in enumerate(names)}
    ids = []
    for value, where in zip(examples.labels, examples.wheres):
        key = str(_label_key(value))
        if key not in index:
            raise InputError(f"{where}: {label_field} {value!r} is not in the training labels ({', '.join(names)})")
        ids.append(index[key])
    return ids


def numbers(examples: Examples, label_field: str = "label") -> list[float]:
    out = []
    for value, where in zip(examples.labels, examples.wheres):
        if isinstance(value, bool):
            raise InputError(f"{where}: {label_field} {value!r} is not a number (regress needs numeric labels)")
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise InputError(
                f"{where}: {label_field} {value!r} is not a number (regress needs numeric labels)"
            ) from None
        if not np.isfinite(x):
            raise InputError(f"{where}: {label_field} {value!r} is not finite")
        out.append(x)
    return out


# ---------------------------------------------------------------------------------------------- metrics


def _confusion(pred: np.ndarray, gold: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(gold * n + pred, minlength=n * n).reshape(n, n).astype(np.float64)  # [gold, pred]


def classification_metrics(pred: np.ndarray, gold: np.ndarray, n: int, binary_f1: bool = False) -> dict[str, float]:
    """accuracy, macro-F1 (classes that occur in gold or pred), MCC (multi-class, Gorodkin's R_K); with
    binary_f1 and two classes, f1 of class 1 as well."""
    pred, gold = np.asarray(pred, dtype=np.int64), np.asarray(gold, dtype=np.int64)
    c = _confusion(pred, gold, n)
    tp = np.diag(c)
    predicted, actual = c.sum(0), c.sum(1)
    denom = predicted + actual
    present = denom > 0
    f1 = np.divide(2 * tp, denom, out=np.zeros(n), where=present)
    s, correct = c.sum(), tp.sum()
    cov = correct * s - (predicted * actual).sum()
    norm = np.sqrt((s * s - (predicted**2).sum()) * (s * s - (actual**2).sum()))
    out = {
        "accuracy": float(correct / s),
        "macro_f1": float(f1[present].mean()),
        "mcc": float(cov / norm) if norm > 0 else 0.0,
    }
    if binary_f1 and n == 2:
        out["f1"] = float(f1[1])
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or xs[end] != xs[start]:
            ranks[order[start:end]] = (start + end + 1) / 2
            start = end
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def regression_metrics(pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    pred, gold = np.asarray(pred, dtype=np.float64).reshape(-1), np.asarray(gold, dtype=np.float64).reshape(-1)
    return {
        "pearson": _pearson(pred, gold),
        "spearman": _pearson(_ranks(pred), _ranks(gold)),
        "mse": float(((pred - gold) ** 2).mean()),
    }


# ---------------------------------------------------------------------------------------------- the run's inputs


def _tokenize(tokenizer: Any, ex: Examples, labels: list, max_length: int) -> list[dict[str, Any]]:
    enc = tokenizer(ex.texts, ex.pairs, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [dict({k: enc[k][i] for k in keys}, labels=labels[i]) for i in range(len(labels))]


def _metrics_fn(family: str, n_labels: int) -> Callable[[Any], dict[str, float]]:
    def compute(eval_pred: Any) -> dict[str, float]:
        logits, gold = eval_pred.predictions, eval_pred.label_ids
        logits = logits[0] if isinstance(logits, tuple) else logits
        if family == "regress":
            return regression_metrics(logits.reshape(-1), gold)
        return classification_metrics(np.argmax(logits, -1), gold, n_labels, binary_f1=family == "pair")

    return compute


def prepare(
    family: str,
    tokenizer: Any,
    train: str,
    validation: str | None,
    max_length: int,
    text_field: str | None = None,
    pair_field: str | None = None,
    label_field: str | None = None,
) -> Prepared:
    """The tokenized rows, head, label set and metrics of a classify / pair / regress run."""
    from transformers import DataCollatorWithPadding

    text_field, label_field = text_field or "text", label_field or "label"
    if family == "pair" and pair_field is None:
        pair_field = "text_pair"
    train_ex = read_examples(train, family, text_field, pair_field, label_field)
    val_ex = read_examples(validation, family, text_field, pair_field, label_field) if validation else None
    if family == "regress":
        names = None
        config: dict[str, Any] = {"num_labels": 1, "problem_type": "regression"}

        def labels(ex: Examples) -> list:
            return numbers(ex, label_field)
    else:
        names = label_names(train_ex, train)
        config = {
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {n: i for i, n in enumerate(names)},
            "problem_type": "single_label_classification",
        }

        def labels(ex: Examples) -> list:
            return class_ids(ex, names, label_field)

    config[FIELDS] = {"text": text_field, "pair": pair_field}  # predict reads the same fields by default
    return Prepared(
        head="BertForSequenceClassification",
        config=config,
        train=_tokenize(tokenizer, train_ex, labels(train_ex), max_length),
        validation=_tokenize(tokenizer, val_ex, labels(val_ex), max_length) if val_ex else None,
        collator=DataCollatorWithPadding(tokenizer),
        metrics=_metrics_fn(family, config["num_labels"]),
        best="pearson" if family == "regress" else "accuracy",
    )
