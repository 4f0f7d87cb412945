"""The sequence task families' data and metrics: labelled rows from every input format, errors that name the
file, line and field, and metrics equal to scikit-learn's and scipy's."""

import json

import numpy as np
import pytest

from fastbert.batch.files import InputError, Reader
from fastbert.tasks import sequence


def _write(path, rows, fmt):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt in ("csv", "tsv"):
        import csv

        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if fmt == "tsv" else ",")
            w.writeheader()
            w.writerows(rows)
    else:
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


ROWS = [
    {"text": "a good film", "text_pair": "yes", "label": "positive", "score": 0.5},
    {"text": "a dull film", "text_pair": "no", "label": "negative", "score": -1.25},
    {"text": "fine", "text_pair": "", "label": "positive", "score": 3},
]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv", "parquet"])
def test_reader_extra_fields(tmp_path, fmt):
    path = _write(tmp_path / f"d.{fmt}", ROWS, fmt)
    rows = list(Reader(path, pair_field="text_pair", extra_fields=("label", "score")))
    assert [r[:3] for r in rows] == [(r["text"], r["text_pair"], r["label"]) for r in ROWS]
    assert [float(r[3]) for r in rows] == [0.5, -1.25, 3.0]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_examples_and_labels(tmp_path, fmt):
    path = _write(tmp_path / f"d.{fmt}", ROWS, fmt)
    ex = sequence.read_examples(path, "classify")
    names = sequence.label_names(ex)
    assert names == ["negative", "positive"]
    assert sequence.class_ids(ex, names) == [1, 0, 1]
    reg = sequence.read_examples(path, "regress", label_field="score")
    assert sequence.numbers(reg, "score") == [0.5, -1.25, 3.0]
    pair = sequence.read_examples(path, "pair")
    assert pair.pairs == ["yes", "no", ""]


def test_integer_labels_sort_numerically(tmp_path):
    rows = [{"text": "x", "label": v} for v in (10, 2, "2", 1.0)]
    ex = sequence.read_examples(_write(tmp_path / "d.jsonl", rows, "jsonl"), "classify")
    assert sequence.label_names(ex) == ["1", "2", "10"]
    assert sequence.class_ids(ex, ["1", "2", "10"]) == [2, 1, 1, 0]


def test_bad_input_names_file_line_and_field(tmp_path):
    train = sequence.read_examples(_write(tmp_path / "t.jsonl", ROWS, "jsonl"), "classify")
    names = sequence.label_names(train)
    dev = _write(tmp_path / "v.csv", [{"text": "a", "label": "positive"}, {"text": "b", "label": "neutral"}], "csv")
    with pytest.raises(InputError, match=r"v\.csv:3: label 'neutral' is not in the training labels"):
        sequence.class_ids(sequence.read_examples(dev, "classify"), names)
    with pytest.raises(InputError, match=r"t\.jsonl:1: label 'positive' is not a number"):
        sequence.numbers(train)
    with pytest.raises(InputError, match=r"no field 'grade'"):
        sequence.read_examples(str(tmp_path / "t.jsonl"), "classify", label_field="grade")
    with pytest.raises(InputError, match=r"no column 'grade'"):
        sequence.read_examples(dev, "classify", label_field="grade")
    empty = tmp_path / "e.csv"
    empty.write_text("text,label\n")
    with pytest.raises(InputError, match="no rows"):
        sequence.read_examples(str(empty), "classify")
    blank = _write(tmp_path / "b.jsonl", [{"text": "a", "label": ""}], "jsonl")
    with pytest.raises(InputError, match=r"b\.jsonl:1: field 'label' is empty"):
        sequence.read_examples(blank, "classify")
    gap = tmp_path / "g.jsonl"
    gap.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y"}\n')
    with pytest.raises(InputError, match=r"g\.jsonl:2: an empty line where a row with 'label' was expected"):
        sequence.read_examples(str(gap), "classify")
    one = sequence.read_examples(_write(tmp_path / "o.jsonl", ROWS[:1], "jsonl"), "classify")
    with pytest.raises(InputError, match="one label value only"):
        sequence.label_names(one)


@pytest.mark.parametrize("n, seed", [(2, 0), (3, 1), (5, 2)])
def test_classification_metrics_match_sklearn(n, seed):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, n, 300)
    pred = np.where(rng.random(300) < 0.7, gold, rng.integers(0, n, 300))
    got = sequence.classification_metrics(pred, gold, n, binary_f1=True)
    assert got["accuracy"] == pytest.approx(metrics.accuracy_score(gold, pred))
    assert got["macro_f1"] == pytest.approx(metrics.f1_score(gold, pred, average="macro"))
    assert got["mcc"] == pytest.approx(metrics.matthews_corrcoef(gold, pred))
    if n == 2:
        assert got["f1"] == pytest.approx(metrics.f1_score(gold, pred))


def test_regression_metrics_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    gold = np.round(rng.random(200) * 4) / 4  # ties
    pred = gold + rng.normal(0, 0.3, 200)
    pred[:20] = pred[0]  # ties in the predictions too
    got = sequence.regression_metrics(pred, gold)
    assert got["pearson"] == pytest.approx(stats.pearsonr(pred, gold)[0])
    assert got["spearman"] == pytest.approx(stats.spearmanr(pred, gold)[0])
    assert got["mse"] == pytest.approx(float(((pred - gold) ** 2).mean()))
