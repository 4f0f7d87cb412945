"""The BERT task heads (fastbert/hf/heads.py) against transformers' heads: losses, logits and every parameter's
gradient (fp32, dropout off, relative 1e-4), checkpoints both ways, label checks, training in lockstep."""

import math

import pytest
import torch
from transformers.models.bert import modeling_bert as hf

from fastbert.hf import heads
from tests.helpers import hf_config, perturb_, ragged

REL = 1e-4
HEADS = [
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertForQuestionAnswering",
    "BertForMaskedLM",
    "BertForNextSentencePrediction",
    "BertForPreTraining",
    "BertForMultipleChoice",
]
# Heads whose result never reads a pad position (labels -100 at pads): they match HF in padding-free mode too.
PAD_FREE_PARITY = [h for h in HEADS if h != "BertForQuestionAnswering"]


def _pair(name, pad_outputs, seed=0, **cfg):
    torch.manual_seed(seed)
    config = hf_config(
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=cfg.pop("num_labels", 3), **cfg
    )
    ref = perturb_(getattr(hf, name)(config), seed)
    ours = getattr(heads, name)(config, pad_outputs=pad_outputs)
    ours.load_state_dict(ref.state_dict())
    return ref.train(), ours.train()


def _batch(name, config, seed=0, B=3, L=11):
    g = torch.Generator().manual_seed(seed + 1)
    ids, mask, tt = ragged(B, L, config.vocab_size, seed=seed, lengths=[L, 5, 8][:B], types=2)
    kw = dict(input_ids=ids, attention_mask=mask, token_type_ids=tt)
    pad = mask == 0
    if name == "BertForSequenceClassification":
        kw["labels"] = torch.randint(0, config.num_labels, (B,), generator=g)
    elif name in ("BertForTokenClassification", "BertForMaskedLM", "BertForPreTraining"):
        n = config.num_labels if name == "BertForTokenClassification" else config.vocab_size
        labels = torch.randint(0, n, (B, L), generator=g).masked_fill(pad, -100)
        if name != "BertForTokenClassification":
            labels = labels.masked_fill(torch.rand(B, L, generator=g) < 0.5, -100)
        kw["labels"] = labels
        if name == "BertForPreTraining":
            kw["next_sentence_label"] = torch.randint(0, 2, (B,), generator=g)
    elif name == "BertForNextSentencePrediction":
        kw["labels"] = torch.randint(0, 2, (B,), generator=g)
    elif name == "BertForQuestionAnswering":
        kw["start_positions"] = torch.tensor([1, 3, 40][:B])  # 40: outside the sequence, ignored as HF does
        kw["end_positions"] = torch.tensor([2, 4, 6][:B])
    elif name == "BertForMultipleChoice":
        C = 2
        ids2, mask2, tt2 = ragged(B * C, L, config.vocab_size, seed=seed + 7, types=2)
        kw = dict(
            input_ids=ids2.view(B, C, L),
            attention_mask=mask2.view(B, C, L),
            token_type_ids=tt2.view(B, C, L),
            labels=torch.randint(0, C, (B,), generator=g),
        )
    return kw


def _loss_and_grads(model, kw):
    model.zero_grad(set_to_none=True)
    out = model(**kw)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_grads_close(ours, ref):
    assert ours.keys() == ref.keys()
    for n in ref:
        scale = ref[n].abs().max().item()
        diff = (ours[n] - ref[n]).abs().max().item()
        assert diff <= REL * max(scale, 1e-6) + 1e-7, f"{n}: max|diff| {diff:.3g} vs max|grad| {scale:.3g}"


@pytest.mark.parametrize("name", HEADS)
def test_hf_mode_matches_transformers(name):
    ref, ours = _pair(name, "hf", num_labels=2 if name == "BertForQuestionAnswering" else 3)
    kw = _batch(name, ref.config)
    out_r, g_r = _loss_and_grads(ref, kw)
    out_o, g_o = _loss_and_grads(ours, kw)
    assert math.isclose(out_o.loss.item(), out_r.loss.item(), rel_tol=REL)
    _assert_grads_close(g_o, g_r)


@pytest.mark.parametrize("name", PAD_FREE_PARITY)
def test_padding_free_matches_transformers(name):
    ref, ours = _pair(name, "zero")
    kw = _batch(name, ref.config)
    out_r, g_r = _loss_and_grads(ref, kw)
    out_o, g_o = _loss_and_grads(ours, kw)
    assert math.isclose(out_o.loss.item(), out_r.loss.item(), rel_tol=REL)
    _assert_grads_close(g_o, g_r)


def test_question_answering_pad_logits_are_dtype_min():
    ref, ours = _pair("BertForQuestionAnswering", "zero", num_labels=2)
    kw = _batch("BertForQuestionAnswering", ref.config)
    kw.pop("start_positions"), kw.pop("end_positions")
    with torch.no_grad():
        o, r = ours(**kw), ref(**kw)
    real = kw["attention_mask"].bool()
    low = torch.finfo(torch.float32).min
    assert (o.start_logits[~real] == low).all() and (o.end_logits[~real] == low).all()
    torch.testing.assert_close(o.start_logits[real], r.start_logits[real], atol=1e-4, rtol=0)
    torch.testing.assert_close(o.end_logits[real], r.end_logits[real], atol=1e-4, rtol=0)


def test_sparse_mlm_prediction_same_loss():
    ref, dense = _pair("BertForMaskedLM", "zero")
    sparse = heads.BertForMaskedLM(ref.config, sparse_prediction=True)
    sparse.load_state_dict(ref.state_dict())
    kw = _batch("BertForMaskedLM", ref.config)
    with torch.no_grad():
        a, b = dense.eval()(**kw), sparse.eval()(**kw)
    n_labelled = int((kw["labels"] != -100).sum())
    assert b.logits.shape == (n_labelled, ref.config.vocab_size)
    assert math.isclose(a.loss.item(), b.loss.item(), rel_tol=1e-5)


def test_sparse_pretraining_prediction_same_loss_and_gradients():
    ref, dense = _pair("BertForPreTraining", "zero")
    sparse = heads.BertForPreTraining(ref.config, sparse_prediction=True)
    sparse.load_state_dict(ref.state_dict())
    kw = _batch("BertForPreTraining", ref.config)
    a, b = dense.eval()(**kw), sparse.eval()(**kw)
    n_labelled = int((kw["labels"] != -100).sum())
    assert b.prediction_logits.shape == (n_labelled, ref.config.vocab_size)
    assert math.isclose(a.loss.item(), b.loss.item(), rel_tol=1e-5)
    assert torch.allclose(a.seq_relationship_logits, b.seq_relationship_logits)
    a.loss.backward()
    b.loss.backward()
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters()):
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name


def test_sparse_pretraining_without_nsp_labels_is_the_mlm_loss():
    ref, _ = _pair("BertForMaskedLM", "zero")
    mlm = heads.BertForMaskedLM(ref.config)
    mlm.load_state_dict(ref.state_dict())
    sparse = heads.BertForPreTraining(ref.config, sparse_prediction=True)
    sparse.load_state_dict(ref.state_dict(), strict=False)  # the NSP layer has no counterpart in the MLM head
    kw = _batch("BertForMaskedLM", ref.config)
    with torch.no_grad():
        want, got = mlm.eval()(**kw).loss, sparse.eval()(**kw).loss
    assert got is not None and math.isclose(got.item(), want.item(), rel_tol=1e-5)


def test_mlm_decoder_tied_and_checkpoints_round_trip(tmp_path):
    ref, ours = _pair("BertForMaskedLM", "zero")
    assert ours.cls.predictions.decoder.weight is ours.bert.embeddings.word_embeddings.weight
    ours.save_pretrained(tmp_path / "ours")
    back = hf.BertForMaskedLM.from_pretrained(tmp_path / "ours")
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    ref.save_pretrained(tmp_path / "hf")
    loaded = heads.BertForMaskedLM.from_pretrained(tmp_path / "hf", pad_outputs="hf")
    assert loaded.bert.pad_outputs == "hf"
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    for k, v in ref.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.parametrize(
    "name, kwargs, exc, match",
    [
        (
            "BertForSequenceClassification",
            dict(labels=torch.tensor([0, 3, 1])),
            ValueError,
            r"labels: value 3 outside \[0, 3\)",
        ),
        (
            "BertForSequenceClassification",
            dict(labels=torch.tensor([0, 1])),
            ValueError,
            r"labels: expected shape \(3,\)",
        ),
        ("BertForTokenClassification", dict(labels=torch.full((3, 11), 7)), ValueError, "labels: value 7"),
        (
            "BertForTokenClassification",
            dict(labels=torch.zeros(3, 10, dtype=torch.long)),
            ValueError,
            "labels: expected shape",
        ),
        (
            "BertForMaskedLM",
            dict(labels=torch.full((3, 11), 211)),
            ValueError,
            r"labels: value 211 outside \[0, 211\) or -100",
        ),
        ("BertForMaskedLM", dict(labels=torch.full((3, 11), -5)), ValueError, "labels: value -5"),
        ("BertForNextSentencePrediction", dict(labels=torch.tensor([0, 2, 1])), ValueError, "labels: value 2"),
        (
            "BertForSequenceClassification",
            dict(labels=torch.tensor([0.5, 1.0, 2.0])),
            ValueError,
            r"multi-label targets must have shape \(3, 3\)",
        ),
    ],
)
def test_bad_labels_name_the_argument(name, kwargs, exc, match):
    _, ours = _pair(name, "zero")
    ids, mask, _ = ragged(3, 11, 211, lengths=[11, 5, 8])
    with pytest.raises(exc, match=match):
        ours(input_ids=ids, attention_mask=mask, **kwargs)


def test_multiple_choice_wrong_rank():
    _, ours = _pair("BertForMultipleChoice", "zero")
    ids, mask, _ = ragged(3, 11, 211)
    with pytest.raises(ValueError, match=r"input_ids: multiple choice expects rank 3"):
        ours(input_ids=ids, attention_mask=mask)


def test_all_padding_row_gives_finite_gradients():
    ref, ours = _pair("BertForTokenClassification", "zero")
    ids, mask, _ = ragged(2, 7, 211, lengths=[7, 3])
    mask[1] = 0
    labels = torch.randint(0, 3, (2, 7)).masked_fill(mask == 0, -100)
    out = ours(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    for n, p in ours.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), n


def test_adamw_steps_in_lockstep():
    ref, ours = _pair("BertForSequenceClassification", "zero")
    opt_r = torch.optim.AdamW(ref.parameters(), lr=1e-3)
    opt_o = torch.optim.AdamW(ours.parameters(), lr=1e-3)
    for step in range(20):
        kw = _batch("BertForSequenceClassification", ref.config, seed=step)
        losses = []
        for model, opt in ((ref, opt_r), (ours, opt_o)):
            opt.zero_grad()
            loss = model(**kw).loss
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) <= 1e-3, f"step {step}: {losses}"


def test_dropout_reproducible_and_statistically_hf():
    torch.manual_seed(0)
    config = hf_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, num_labels=3)
    ref = perturb_(hf.BertForSequenceClassification(config))
    ours = heads.BertForSequenceClassification(config)
    ours.load_state_dict(ref.state_dict())
    ref.train(), ours.train()
    kw = _batch("BertForSequenceClassification", config, B=3, L=11)

    def loss(model, seed):
        torch.manual_seed(seed)
        return model(**kw).loss.item()

    assert loss(ours, 5) == loss(ours, 5)  # the mask is a function of the seed
    assert loss(ours, 5) != loss(ours, 6)  # ... and dropout is on
    with torch.no_grad():
        ours_mean = sum(loss(ours, s) for s in range(60)) / 60
        ref_mean = sum(loss(ref, s) for s in range(60)) / 60
        clean = ours.eval()(**kw).loss.item()
    # Same distribution: the means agree far better than either differs from the no-dropout loss scale.
    assert abs(ours_mean - ref_mean) < 0.05 * max(abs(ref_mean), 1e-3) + 0.02, (ours_mean, ref_mean, clean)


def test_trainer_fine_tunes_unchanged(tmp_path):
    """transformers' Trainer drives a fastbert head like its own: the loss falls on a learnable toy task."""
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    config = hf_config(num_labels=2)
    model = heads.BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(32):
        n = int(torch.randint(3, 12, (1,), generator=g))
        label = i % 2
        ids = torch.randint(10, 100, (n,), generator=g) + 100 * label  # the label is readable from the ids
        rows.append({"input_ids": ids, "attention_mask": torch.ones(n, dtype=torch.long), "labels": label})

    def collate(batch):
        L = max(len(r["input_ids"]) for r in batch)
        pad = lambda t: torch.nn.functional.pad(t, (0, L - len(t)))  # noqa: E731
        return {
            "input_ids": torch.stack([pad(r["input_ids"]) for r in batch]),
            "attention_mask": torch.stack([pad(r["attention_mask"]) for r in batch]),
            "labels": torch.tensor([r["labels"] for r in batch]),
        }

    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_train_epochs=6,
        learning_rate=2e-3,
        logging_steps=4,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) >= 3 and losses[-1] < 0.5 * losses[0], losses
    assert type(trainer.model.bert).__name__ == "BertModel" and trainer.model.bert.pad_outputs == "zero"


@pytest.mark.parametrize("name", PAD_FREE_PARITY)
def test_from_hf_and_optimize_accept_every_head(name):
    import fastbert

    ref, _ = _pair(name, "zero")
    kw = _batch(name, ref.config)
    with torch.no_grad():
        want = ref.eval()(**kw).loss.item()
        converted = fastbert.from_hf(ref)
        assert type(converted) is type(ref) and fastbert.is_optimized(converted)
        assert math.isclose(converted(**kw).loss.item(), want, rel_tol=REL)
        fastbert.optimize(ref)
        assert math.isclose(ref(**kw).loss.item(), want, rel_tol=REL)
        fastbert.restore(ref)
        assert not fastbert.is_optimized(ref)
