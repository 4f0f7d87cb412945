"""`fastbert pretrain` end to end on a generated corpus: a WordPiece vocabulary trained on it, a tiny model
that learns masked LM and next-sentence prediction, an output folder transformers loads, and bad input refused."""

import importlib.util
import json

import pytest

from fastbert.cli import main
from tests.tasks import data


def test_tiny_model_learns_mlm_and_nsp(tmp_path, capsys):
    corpus = data.write_corpus(tmp_path / "corpus.txt", data.corpus(1000, seed=0))
    out = tmp_path / "bert-tiny"
    options = "--config tiny --vocab-size 600 --max-seq-length 64 --epochs 20 --batch-size 16 --lr 1e-3"
    code = main(["pretrain", "--corpus", corpus, "--output", str(out), *options.split(), "--validation-share", "0.1"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    # measured: NSP 0.95 on 232 held-out pairs (a random B shares A's topic 1 time in 16, so about
    # 0.97 is the ceiling), MLM loss 3.27 (uniform over the vocabulary: ln 600 = 6.4)
    assert metrics["nsp_accuracy"] >= 0.9, metrics
    assert metrics["mlm_loss"] <= 4.0, metrics
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "loss" in e]
    assert {"mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy", "train_tokens_per_second"} <= set(steps[-1])
    assert steps[-1]["nsp_accuracy"] > steps[0]["nsp_accuracy"] and steps[-1]["mlm_loss"] < steps[0]["mlm_loss"]
    assert (out / "loss.png").is_file()
    if importlib.util.find_spec("tensorboard"):
        assert any(p.name.startswith("events.out.tfevents") for p in (out / "runs").iterdir())

    from transformers import AutoTokenizer, BertForPreTraining, BertModel

    ref = BertForPreTraining.from_pretrained(out)
    assert ref.config.num_hidden_layers == 2 and ref.config.hidden_size == 128
    BertModel.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.mask_token == "[MASK]" and len(tok) <= 600
    assert not (tmp_path / "bert-tiny.partial").exists() and not (tmp_path / "bert-tiny.checkpoints").exists()


def test_bad_corpus_is_refused(tmp_path, capsys):
    one = data.write_corpus(tmp_path / "one.txt", data.corpus(1, seed=0))
    assert main(["pretrain", "--corpus", one, "--output", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "at least two documents" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert main(["pretrain", "--corpus", str(empty), "--output", str(tmp_path / "o")]) == 2
    assert "no text" in capsys.readouterr().err
    assert main(["pretrain", "--corpus", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "o")]) == 2
    assert "no such corpus file" in capsys.readouterr().err
    assert main(["pretrain", "--corpus", one, "--output", str(tmp_path / "o"), "--config", "huge"]) == 2
    assert not (tmp_path / "o").exists()


def test_output_in_a_new_folder_and_a_killed_runs_pairs_cleared(tmp_path):
    """OUTPUT's parent folders are made; pairs a killed run left in OUTPUT.pairs are cleared, and the run removes
    its own."""
    from fastbert.tasks.pretrain import pretrain
    from fastbert.tasks.run import RunOptions

    corpus = data.write_corpus(tmp_path / "c.txt", data.corpus(40, seed=2))
    out = tmp_path / "runs" / "new" / "bert"
    stale = out.with_name("bert.pairs") / "rank-0"
    stale.mkdir(parents=True)
    (stale / "tokens.int32").write_bytes(b"left by a killed run")
    options = RunOptions(epochs=1, batch_size=16, progress=False)
    metrics = pretrain([corpus], str(out), config="tiny", vocab_size=200, max_seq_length=32, options=options)
    assert metrics["pairs"] > 0 and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["bert"]


@pytest.mark.parametrize("max_tokens", [None, 300])
def test_an_interrupted_run_resumed_ends_with_the_same_weights(tmp_path, monkeypatch, max_tokens):
    """Two epochs straight through, against one epoch, an interruption right after its checkpoint, and --resume:
    the same final weights (model, optimizer, schedule, RNG, masks and batch order all continue where they
    stopped), with batches of a fixed count or cut by a token budget."""
    import torch
    import transformers
    from safetensors.torch import load_file

    from fastbert.tasks.pretrain import pretrain
    from fastbert.tasks.run import RunOptions

    corpus = data.write_corpus(tmp_path / "c.txt", data.corpus(120, seed=1))
    kw = dict(config="tiny", vocab_size=300, max_seq_length=48, max_tokens=max_tokens)

    def opts(resume=False):
        return RunOptions(epochs=2, learning_rate=1e-3, batch_size=16, seed=3, resume=resume, progress=False)

    pretrain([corpus], str(tmp_path / "straight"), options=opts(), **kw)

    save = transformers.Trainer._save_checkpoint

    def save_then_stop(self, *args, **kwargs):
        save(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        pretrain([corpus], str(tmp_path / "resumed"), options=opts(), **kw)
    assert not (tmp_path / "resumed").exists() and (tmp_path / "resumed.checkpoints").is_dir()
    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", save)
    steps = []
    step = transformers.Trainer.training_step

    def counted(self, *args, **kwargs):
        steps.append(self.state.epoch)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", counted)
    pretrain([corpus], str(tmp_path / "resumed"), options=opts(resume=True), **kw)
    assert steps and min(steps) >= 1.0  # it went on from the checkpoint: only the second epoch's steps ran

    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_the_trained_vocabulary_is_reproducible():
    """tokenizers' WordPiece trainer numbers tokens differently from run to run; fastbert renumbers them."""
    from fastbert.tasks.pretrain import SPECIAL, _train_tokenizer

    docs = data.corpus(120, seed=1)
    vocabs = [_train_tokenizer((s for d in docs for s in d), 300, True).get_vocab() for _ in range(4)]
    assert all(v == vocabs[0] for v in vocabs)
    assert [vocabs[0][t] for t in SPECIAL] == [0, 1, 2, 3, 4]
