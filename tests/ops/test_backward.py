"""Backward ops (csrc/cpu/*_backward.cpp) and their autograd registration (csrc/autograd.cpp).

Each op is checked three ways: torch.autograd.gradcheck in float64 through the forward op (the backward
kernel against finite differences of the forward kernel), the gradients through autograd against the
reference's own autograd (fastbert/ops/reference.py) in float32/float64/bfloat16, and torch.library.opcheck on
the forward op with inputs that require grad (autograd registration, fake tensors, AOT autograd) and on the
backward op. Tolerances (atol, rtol) of gradients against the reference's autograd, same inputs:
float64 1e-10; float32 2e-5 on elementwise gradients, 1e-4 on gradients summed over rows (different
summation order); bfloat16 3e-2 and float16 4e-3 (one rounding of the result), looser on row sums of
rounded terms (SUM_TOL).
"""

import pytest
import torch

from fastbert import ops
from fastbert.ops import autograd as fb_autograd
from fastbert.ops import reference
from tests.helpers import randn, requires_extension

pytestmark = requires_extension

GRAD_TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
    torch.float16: dict(atol=4e-3, rtol=4e-3),
}
SUM_TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.bfloat16: dict(atol=1e-1, rtol=3e-2),
    torch.float16: dict(atol=3e-2, rtol=5e-3),
}


def _grads(fn, inputs, grad_out):
    """Gradients of fn(*inputs)[0] (or fn(*inputs)) for the inputs that require grad, with grad_out."""
    out = fn(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    return torch.autograd.grad(out, leaves, grad_out)


def _leaf(t):
    return t.detach().clone().requires_grad_(True)


def _check_grads(got, want, tols, names):
    for g, w, name in zip(got, want, names):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, w, **tols[name], msg=lambda m: f"{name}\n{m}")


def _threads(n):
    class _Ctx:
        def __enter__(self):
            self.prev = torch.get_num_threads()
            torch.set_num_threads(n)

        def __exit__(self, *exc):
            torch.set_num_threads(self.prev)

    return _Ctx()


# ================================================================ bias_act

ACTS = sorted(reference.ACTIVATIONS)


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1), (37, 7), (5, 389), (2, 3, 768)])
def test_bias_act_grads_match_reference(cpu_isa, gen, activation, dtype, shape):
    x = _leaf(randn(*shape, dtype=dtype, gen=gen, scale=2.0))
    b = _leaf(randn(shape[-1], dtype=dtype, gen=gen))
    g = randn(*shape, dtype=dtype, gen=gen)
    got = _grads(lambda x, b: torch.ops.fastbert.bias_act(x, b, activation), (x, b), g)
    want = _grads(lambda x, b: reference.bias_act(x, b, activation), (_leaf(x), _leaf(b)), g)
    _check_grads(got, want, {"x": GRAD_TOL[dtype], "bias": SUM_TOL[dtype]}, ["x", "bias"])


@pytest.mark.parametrize("activation", ACTS)
def test_bias_act_gradcheck(cpu_isa, gen, activation):
    x = _leaf(randn(3, 17, dtype=torch.float64, gen=gen, scale=2.0))
    b = _leaf(randn(17, dtype=torch.float64, gen=gen))
    assert torch.autograd.gradcheck(lambda x, b: torch.ops.fastbert.bias_act(x, b, activation), (x, b))
    # only x requires grad; a 1-element row
    x1 = _leaf(randn(1, 1, dtype=torch.float64, gen=gen))
    b1 = randn(1, dtype=torch.float64, gen=gen)
    assert torch.autograd.gradcheck(lambda x: torch.ops.fastbert.bias_act(x, b1, activation), (x1,))


def test_bias_act_relu_derivative_at_zero_is_zero():
    x = _leaf(torch.tensor([[-1.0, 0.0, 1.0]]))
    b = _leaf(torch.zeros(3))
    gx, gb = _grads(lambda x, b: torch.ops.fastbert.bias_act(x, b, "relu"), (x, b), torch.ones(1, 3))
    assert gx.tolist() == [[0.0, 0.0, 1.0]] and gb.tolist() == [0.0, 0.0, 1.0]


def test_bias_act_backward_empty_rows():
    x, b = _leaf(torch.empty(0, 8)), _leaf(torch.randn(8))
    gx, gb = _grads(lambda x, b: torch.ops.fastbert.bias_act(x, b, "gelu"), (x, b), torch.empty(0, 8))
    assert gx.shape == (0, 8) and torch.equal(gb, torch.zeros(8))


def test_bias_act_opcheck(gen):
    x = _leaf(randn(5, 33, gen=gen))
    b = _leaf(randn(33, gen=gen))
    torch.library.opcheck(torch.ops.fastbert.bias_act.default, (x, b, "gelu"))
    torch.library.opcheck(
        torch.ops.fastbert.bias_act_backward.default, (randn(5, 33, gen=gen), x.detach(), b.detach(), "silu")
    )


@pytest.mark.parametrize(
    "bad, match, exc",
    [
        (dict(grad=torch.randn(4, 7)), "grad", RuntimeError),
        (dict(grad=torch.randn(4, 8, dtype=torch.float64)), "grad", RuntimeError),
        (dict(bias=torch.randn(7)), "bias", RuntimeError),
        (dict(activation="tanh"), "activation", ValueError),
        (
            dict(x=torch.randint(0, 3, (4, 8)), grad=torch.randint(0, 3, (4, 8)), bias=torch.randint(0, 3, (8,))),
            "floating",
            RuntimeError,
        ),
    ],
)
def test_bias_act_backward_bad_args(bad, match, exc):
    args = dict(grad=torch.randn(4, 8), x=torch.randn(4, 8), bias=torch.randn(8), activation="gelu")
    args.update(bad)
    with pytest.raises(exc, match=match):
        torch.ops.fastbert.bias_act_backward(**args)


# ================================================================ bias_residual_layernorm


def _brln_inputs(gen, dtype, shape, with_bias):
    H = shape[-1]
    x = _leaf(randn(*shape, dtype=dtype, gen=gen))
    residual = _leaf(randn(*shape, dtype=dtype, gen=gen, scale=3.0))
    bias = _leaf(randn(H, dtype=dtype, gen=gen)) if with_bias else None
    w = _leaf(randn(H, dtype=dtype, gen=gen))
    b = _leaf(randn(H, dtype=dtype, gen=gen))
    return x, bias, residual, w, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 7), (37, 33), (300, 389), (2, 5, 768), (3, 1029)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_residual_layernorm_grads_match_reference(cpu_isa, gen, dtype, shape, with_bias):
    inputs = _brln_inputs(gen, dtype, shape, with_bias)
    g = randn(*shape, dtype=dtype, gen=gen)
    got = _grads(lambda *a: torch.ops.fastbert.bias_residual_layernorm(*a, 1e-12), inputs, g)
    ref_inputs = [_leaf(t) if t is not None else None for t in inputs]
    want = _grads(lambda *a: reference.bias_residual_layernorm(*a, 1e-12), ref_inputs, g)
    names = ["x"] + (["bias"] if with_bias else []) + ["residual", "ln_weight", "ln_bias"]
    tols = {
        "x": GRAD_TOL[dtype],
        "residual": GRAD_TOL[dtype],
        "bias": SUM_TOL[dtype],
        "ln_weight": SUM_TOL[dtype],
        "ln_bias": SUM_TOL[dtype],
    }
    if dtype == torch.float32:  # grad_s: rstd * (g w - mean(g w) - xhat mean(g w xhat)), sums over H
        tols["x"] = tols["residual"] = dict(atol=5e-5, rtol=5e-5)
    _check_grads(got, want, tols, names)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 2, 17)])
def test_bias_residual_layernorm_gradcheck(cpu_isa, gen, shape, with_bias):
    inputs = _brln_inputs(gen, torch.float64, shape, with_bias)
    assert torch.autograd.gradcheck(lambda *a: torch.ops.fastbert.bias_residual_layernorm(*a, 1e-5)[0], inputs)


def test_bias_residual_layernorm_backward_deterministic_across_threads(gen):
    inputs = _brln_inputs(gen, torch.float32, (1000, 389), True)
    g = randn(1000, 389, gen=gen)
    with _threads(1):
        one = _grads(lambda *a: torch.ops.fastbert.bias_residual_layernorm(*a, 1e-12), inputs, g)
    with _threads(2):
        two = _grads(lambda *a: torch.ops.fastbert.bias_residual_layernorm(*a, 1e-12), inputs, g)
        again = _grads(lambda *a: torch.ops.fastbert.bias_residual_layernorm(*a, 1e-12), inputs, g)
    for a, b, c in zip(one, two, again):
        assert torch.equal(a, b) and torch.equal(b, c)


def test_bias_residual_layernorm_backward_empty_rows():
    x, bias, residual, w, b = (
        _leaf(torch.empty(0, 16)),
        _leaf(torch.randn(16)),
        _leaf(torch.empty(0, 16)),
        _leaf(torch.randn(16)),
        _leaf(torch.randn(16)),
    )
    grads = _grads(
        lambda *a: torch.ops.fastbert.bias_residual_layernorm(*a, 1e-12), (x, bias, residual, w, b), torch.empty(0, 16)
    )
    assert grads[0].shape == (0, 16)
    for gr in grads[1:]:
        assert torch.isfinite(gr).all() and not gr.any()


def test_bias_residual_layernorm_opcheck(gen):
    for with_bias in (True, False):
        inputs = _brln_inputs(gen, torch.float32, (6, 40), with_bias)
        torch.library.opcheck(torch.ops.fastbert.bias_residual_layernorm.default, (*inputs, 1e-12))
    x, bias, residual, w, _ = [t.detach() for t in _brln_inputs(gen, torch.float32, (6, 40), True)]
    _, mean, rstd = torch.ops.fastbert.bias_residual_layernorm(x, bias, residual, w, w, 1e-12)
    torch.library.opcheck(
        torch.ops.fastbert.bias_residual_layernorm_backward.default,
        (randn(6, 40, gen=gen), x, bias, residual, w, mean, rstd),
    )
    torch.library.opcheck(
        torch.ops.fastbert.bias_residual_layernorm_backward.default,
        (randn(6, 40, gen=gen), x, None, residual, w, mean, rstd),
    )


def test_bias_residual_layernorm_stats_not_differentiable(gen):
    x, bias, residual, w, b = _brln_inputs(gen, torch.float32, (4, 8), True)
    out, mean, rstd = torch.ops.fastbert.bias_residual_layernorm(x, bias, residual, w, b, 1e-12)
    assert out.requires_grad and not mean.requires_grad and not rstd.requires_grad


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(grad_out=torch.randn(4, 7)), "grad_out"),
        (dict(residual=torch.randn(3, 8)), "residual"),
        (dict(bias=torch.randn(7)), "bias"),
        (dict(ln_weight=torch.randn(8, dtype=torch.float64)), "ln_weight"),
        (dict(mean=torch.randn(5)), "mean"),
        (dict(rstd=torch.randn(4, dtype=torch.float64)), "rstd"),
    ],
)
def test_bias_residual_layernorm_backward_bad_args(bad, match):
    args = dict(
        grad_out=torch.randn(4, 8),
        x=torch.randn(4, 8),
        bias=torch.randn(8),
        residual=torch.randn(4, 8),
        ln_weight=torch.randn(8),
        mean=torch.randn(4),
        rstd=torch.rand(4),
    )
    args.update(bad)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.fastbert.bias_residual_layernorm_backward(**args)


# ================================================================ embeddings


def _emb_inputs(gen, dtype, n, H, V=13, P=11, TV=3, index_dtype=torch.long, types="ids"):
    """Small tables so that ids repeat (the scatter-add must sum them). types: "ids", "zeros" (table, no
    ids) or None (no token-type table)."""
    ids = torch.randint(0, V, (n,), generator=gen).to(index_dtype)
    pos = torch.randint(0, P, (n,), generator=gen).to(index_dtype)
    tt_ids = torch.randint(0, TV, (n,), generator=gen).to(index_dtype) if types == "ids" else None
    word = _leaf(randn(V, H, dtype=dtype, gen=gen))
    position = _leaf(randn(P, H, dtype=dtype, gen=gen))
    tt = _leaf(randn(TV, H, dtype=dtype, gen=gen)) if types is not None else None
    w = _leaf(randn(H, dtype=dtype, gen=gen))
    b = _leaf(randn(H, dtype=dtype, gen=gen))
    return [ids, pos, tt_ids, word, position, tt, w, b]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("n, H", [(1, 7), (37, 33), (200, 389), (5, 768)])
@pytest.mark.parametrize("types", ["ids", "zeros", None])
def test_embeddings_grads_match_reference(cpu_isa, gen, dtype, n, H, types):
    inputs = _emb_inputs(gen, dtype, n, H, types=types)
    g = randn(n, H, dtype=dtype, gen=gen)
    got = _grads(lambda *a: torch.ops.fastbert.embeddings(*a, 1e-12), inputs, g)
    names = ["word", "position"] + (["token_type"] if types is not None else []) + ["ln_weight", "ln_bias"]
    if dtype == torch.bfloat16:
        # The reference's bf16 backward scatters bf16-rounded rows in bf16 (nn.Embedding's); the kernel sums in
        # fp32 and rounds once. Compare both with the float64 reference on the same inputs: ours must be within
        # bf16 resolution of the largest gradient, and no further from it than the bf16 reference.
        ref64 = [_leaf(t.double()) if isinstance(t, torch.Tensor) and t.requires_grad else t for t in inputs]
        want = _grads(lambda *a: reference.embeddings(*a, 1e-12), ref64, g.double())
        ref16 = [_leaf(t) if isinstance(t, torch.Tensor) and t.requires_grad else t for t in inputs]
        ref_bf16 = _grads(lambda *a: reference.embeddings(*a, 1e-12), ref16, g)
        for a, w, r, name in zip(got, want, ref_bf16, names):
            err, ref_err = (a.double() - w).abs().max(), (r.double() - w).abs().max()
            assert err <= 1.6e-2 * w.abs().max() and err <= ref_err + 1e-12, (name, err, ref_err)
        return
    ref_inputs = [_leaf(t) if isinstance(t, torch.Tensor) and t.requires_grad else t for t in inputs]
    want = _grads(lambda *a: reference.embeddings(*a, 1e-12), ref_inputs, g)
    _check_grads(got, want, {name: SUM_TOL[dtype] for name in names}, names)


def test_embeddings_2d_int32_ids(cpu_isa, gen):
    inputs = _emb_inputs(gen, torch.float32, 12, 40, index_dtype=torch.int32)
    inputs[:3] = [t.reshape(3, 4) for t in inputs[:3]]
    g = randn(3, 4, 40, gen=gen)
    got = _grads(lambda *a: torch.ops.fastbert.embeddings(*a, 1e-12), inputs, g)
    ref_inputs = [_leaf(t) if isinstance(t, torch.Tensor) and t.requires_grad else t for t in inputs]
    want = _grads(lambda *a: reference.embeddings(*a, 1e-12), ref_inputs, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **SUM_TOL[torch.float32])


@pytest.mark.parametrize("types", ["ids", None])
def test_embeddings_gradcheck(cpu_isa, gen, types):
    inputs = _emb_inputs(gen, torch.float64, 9, 6, V=4, P=5, TV=2, types=types)
    assert torch.autograd.gradcheck(lambda *a: torch.ops.fastbert.embeddings(*a, 1e-5)[0], inputs)


def test_embeddings_padding_idx_follows_hf(gen):
    """With zero_row_grad(word, pad) the word table's gradient is nn.Embedding(padding_idx=pad)'s; the position,
    token-type and LayerNorm gradients still see the pad tokens (as in HF)."""
    pad = 0
    inputs = _emb_inputs(gen, torch.float32, 40, 24, V=6)
    ids = inputs[0]
    assert (ids == pad).any()
    g = randn(40, 24, gen=gen)

    def ours(word, position, tt, w, b):
        return ops.embeddings(
            ids, inputs[1], inputs[2], fb_autograd.zero_row_grad(word, pad), position, tt, w, b, 1e-12
        )

    def hf_like(word, position, tt, w, b):
        s = torch.nn.functional.embedding(ids, word, padding_idx=pad) + position[inputs[1]] + tt[inputs[2]]
        return torch.nn.functional.layer_norm(s, (24,), w, b, 1e-12)

    leaves = inputs[3:]
    got = _grads(ours, leaves, g)
    want = _grads(hf_like, [_leaf(t) for t in leaves], g)
    assert not got[0][pad].any() and got[0].any()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **SUM_TOL[torch.float32])
    # without zero_row_grad the pad row gets its tokens' gradient (no padding_idx in the formula)
    plain = _grads(lambda *a: ops.embeddings(ids, inputs[1], inputs[2], *a, 1e-12), leaves, g)
    assert plain[0][pad].abs().sum() > 0


def test_embeddings_backward_deterministic_across_threads(gen):
    inputs = _emb_inputs(gen, torch.float32, 2000, 389, V=50)
    g = randn(2000, 389, gen=gen)
    with _threads(1):
        one = _grads(lambda *a: torch.ops.fastbert.embeddings(*a, 1e-12), inputs, g)
    with _threads(2):
        two = _grads(lambda *a: torch.ops.fastbert.embeddings(*a, 1e-12), inputs, g)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def test_embeddings_backward_empty():
    inputs = _emb_inputs(torch.Generator().manual_seed(0), torch.float32, 0, 16)
    grads = _grads(lambda *a: torch.ops.fastbert.embeddings(*a, 1e-12), inputs, torch.empty(0, 16))
    for gr in grads:
        assert torch.isfinite(gr).all() and not gr.any()


def test_embeddings_opcheck(gen):
    for types in ("ids", "zeros", None):
        inputs = _emb_inputs(gen, torch.float32, 10, 20, types=types)
        torch.library.opcheck(torch.ops.fastbert.embeddings.default, (*inputs, 1e-12))
    ids, pos, tt_ids, word, position, tt, w, b = [
        t.detach() if t is not None else None for t in _emb_inputs(gen, torch.float32, 10, 20)
    ]
    _, mean, rstd = torch.ops.fastbert.embeddings(ids, pos, tt_ids, word, position, tt, w, b, 1e-12)
    g = randn(10, 20, gen=gen)
    torch.library.opcheck(
        torch.ops.fastbert.embeddings_backward.default, (g, ids, pos, tt_ids, word, position, tt, w, mean, rstd)
    )
    torch.library.opcheck(
        torch.ops.fastbert.embeddings_backward.default, (g, ids, pos, None, word, position, None, w, mean, rstd)
    )


@pytest.mark.parametrize(
    "bad, match, exc",
    [
        (dict(input_ids=torch.tensor([0, 1, 99])), "input_ids", IndexError),
        (dict(position_ids=torch.tensor([0, -1, 2])), "position_ids", IndexError),
        (dict(token_type_ids=torch.tensor([0, 5, 1])), "token_type_ids", IndexError),
        (dict(grad_out=torch.randn(3, 7)), "grad_out", RuntimeError),
        (dict(mean=torch.randn(4)), "mean", RuntimeError),
        (dict(position_weight=torch.randn(11, 7)), "position_weight", RuntimeError),
        (dict(ln_weight=torch.randn(7)), "ln_weight", RuntimeError),
    ],
)
def test_embeddings_backward_bad_args(bad, match, exc):
    args = dict(
        grad_out=torch.randn(3, 8),
        input_ids=torch.tensor([0, 1, 2]),
        position_ids=torch.tensor([0, 1, 2]),
        token_type_ids=torch.tensor([0, 1, 0]),
        word_weight=torch.randn(13, 8),
        position_weight=torch.randn(11, 8),
        token_type_weight=torch.randn(2, 8),
        ln_weight=torch.randn(8),
        mean=torch.randn(3),
        rstd=torch.rand(3),
    )
    args.update(bad)
    with pytest.raises(exc, match=match):
        torch.ops.fastbert.embeddings_backward(**args)


# ================================================================ the Python face of the ops (fastbert.ops)


def test_differentiable_ops_run_the_kernel_while_training(gen):
    """Each op in DIFFERENTIABLE has a CPU backward kernel, and ops.<op> takes the forward kernel (not the
    reference) when inputs require grad."""
    for name in ops.DIFFERENTIABLE:
        assert fb_autograd.has_backward_kernel(name, "cpu"), name
    x, b = _leaf(randn(4, 8, gen=gen)), _leaf(randn(8, gen=gen))
    y = ops.bias_act(x, b, "gelu")
    assert "fastbert" in y.grad_fn.name() and "BiasAct" in y.grad_fn.name()


# ================================================================ attention (packed) and attention_masked


def _cu(lens):
    return torch.tensor([0] + torch.tensor(lens, dtype=torch.long).cumsum(0).tolist(), dtype=torch.int32)


def _attn_inputs(gen, dtype, lens, nh, d, with_bias=True):
    T, H = sum(lens), nh * d
    qkv = _leaf(randn(T, 3 * H, dtype=dtype, gen=gen))
    bias = _leaf(randn(3 * H, dtype=dtype, gen=gen, scale=0.5)) if with_bias else None
    return qkv, bias, _cu(lens), max(lens + [0])


# float32: sums over up to 128 keys and d head dims in a different order, P from the saved lse; float64
# recomputes the softmax (its saved lse is float32 by the op's contract).
ATTN_TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=5e-5, rtol=5e-5),
    torch.bfloat16: dict(atol=5e-2, rtol=5e-2),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
}
# n x n x d up to 64^3 runs in plain loops, larger through at::mm_out (csrc/cpu/attention_backward.h): both kinds
ATTN_CASES = [
    ([1], 1, 16),
    ([5, 0, 17, 1], 3, 32),
    ([33, 7], 2, 80),
    ([64, 3, 40], 2, 64),
    ([20, 9], 1, 128),
    ([90, 5], 2, 48),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lens, nh, d", ATTN_CASES)
@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
@pytest.mark.parametrize("with_bias", [True, False])
def test_attention_grads_match_reference(cpu_isa, gen, dtype, lens, nh, d, dropout_p, with_bias):
    qkv, bias, cu, max_seqlen = _attn_inputs(gen, dtype, lens, nh, d, with_bias)
    g = randn(sum(lens), nh * d, dtype=dtype, gen=gen)
    args = (cu, max_seqlen, nh, d**-0.5, dropout_p, 1234567890123, 77)
    inputs = (qkv, bias) if with_bias else (qkv,)
    fwd = (
        (lambda q, b: torch.ops.fastbert.attention(q, b, *args))
        if with_bias
        else (lambda q: torch.ops.fastbert.attention(q, None, *args))
    )
    ref = (
        (lambda q, b: reference.attention(q, b, *args))
        if with_bias
        else (lambda q: reference.attention(q, None, *args))
    )
    got = _grads(fwd, inputs, g)
    want = _grads(ref, [_leaf(t) for t in inputs], g)
    names = ["qkv", "qkv_bias"][: len(inputs)]
    tols = {"qkv": ATTN_TOL[dtype], "qkv_bias": SUM_TOL[dtype] if dtype == torch.float32 else ATTN_TOL[dtype]}
    _check_grads(got, want, tols, names)


def test_attention_dropout_changes_gradients(gen):
    """The dropout mask is really applied in the backward (a test of the test: p > 0 differs from p = 0)."""
    qkv, bias, cu, max_seqlen = _attn_inputs(gen, torch.float32, [12, 5], 2, 16)
    g = randn(17, 32, gen=gen)
    grads = [
        _grads(lambda q: torch.ops.fastbert.attention(q, bias.detach(), cu, max_seqlen, 2, 0.25, p, 1, 0), (qkv,), g)[0]
        for p in (0.0, 0.3)
    ]
    assert not torch.allclose(grads[0], grads[1])
    other_seed = _grads(
        lambda q: torch.ops.fastbert.attention(q, bias.detach(), cu, max_seqlen, 2, 0.25, 0.3, 2, 0), (qkv,), g
    )[0]
    assert not torch.allclose(grads[1], other_seed)


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_attention_gradcheck(cpu_isa, gen, dropout_p):
    qkv, bias, cu, max_seqlen = _attn_inputs(gen, torch.float64, [3, 0, 4, 1], 2, 5)
    fn = lambda q, b: torch.ops.fastbert.attention(q, b, cu, max_seqlen, 2, 0.7, dropout_p, 42, 5)[0]
    assert torch.autograd.gradcheck(fn, (qkv, bias))


def test_attention_empty_batch_no_nan():
    for lens in ([0], [0, 0, 0]):
        qkv, bias = _leaf(torch.randn(0, 48)), _leaf(torch.randn(48))
        grads = _grads(
            lambda q, b: torch.ops.fastbert.attention(q, b, _cu(lens), 0, 2, 0.25, 0.1, 3, 0),
            (qkv, bias),
            torch.empty(0, 16),
        )
        assert grads[0].shape == (0, 48) and torch.equal(grads[1], torch.zeros(48))


def test_attention_opcheck(gen):
    qkv, bias, cu, max_seqlen = _attn_inputs(gen, torch.float32, [6, 0, 3], 2, 8)
    torch.library.opcheck(torch.ops.fastbert.attention.default, (qkv, bias, cu, max_seqlen, 2, 0.35, 0.2, 9, 1))
    torch.library.opcheck(torch.ops.fastbert.attention.default, (qkv, None, cu, max_seqlen, 2, 0.35))
    out, lse = reference.attention(qkv.detach(), bias.detach(), cu, max_seqlen, 2, 0.35, 0.2, 9, 1)
    g = randn(9, 16, gen=gen)
    torch.library.opcheck(
        torch.ops.fastbert.attention_backward.default,
        (g, qkv.detach(), bias.detach(), out, lse, cu, max_seqlen, 2, 0.35, 0.2, 9, 1),
    )
    torch.library.opcheck(
        torch.ops.fastbert.attention_backward.default, (g, qkv.detach(), None, out, lse, cu, max_seqlen, 2, 0.35)
    )


@pytest.mark.parametrize(
    "bad, match, exc",
    [
        (dict(grad_out=torch.randn(9, 15)), "grad_out", RuntimeError),
        (dict(out=torch.randn(9, 16, dtype=torch.float64)), "out", RuntimeError),
        (dict(qkv=torch.randn(9, 47)), "qkv", RuntimeError),
        (dict(qkv_bias=torch.randn(47)), "qkv_bias", RuntimeError),
        (dict(lse=torch.randn(3, 9)), "lse", RuntimeError),
        (dict(lse=torch.randn(2, 9, dtype=torch.float64)), "lse", RuntimeError),
        (dict(cu_seqlens=torch.tensor([0, 6, 9], dtype=torch.int64)), "cu_seqlens", RuntimeError),
        (dict(cu_seqlens=torch.tensor([0, 6, 8], dtype=torch.int32)), "cu_seqlens", ValueError),
        (dict(max_seqlen=5), "max_seqlen", ValueError),
        (dict(num_heads=0), "num_heads", ValueError),
        (dict(dropout_p=1.0), "dropout_p", ValueError),
    ],
)
def test_attention_backward_bad_args(bad, match, exc):
    args = dict(
        grad_out=torch.randn(9, 16),
        qkv=torch.randn(9, 48),
        qkv_bias=torch.randn(48),
        out=torch.randn(9, 16),
        lse=torch.randn(2, 9),
        cu_seqlens=torch.tensor([0, 6, 9], dtype=torch.int32),
        max_seqlen=6,
        num_heads=2,
        scale=0.35,
        dropout_p=0.0,
        seed=0,
        offset=0,
    )
    args.update(bad)
    with pytest.raises(exc, match=match):
        torch.ops.fastbert.attention_backward(**args)


def _masks(gen, B, nh, L):
    lengths = torch.tensor([L, max(L - 3, 1)] + [1] * (B - 2))[:B]
    keep = torch.arange(L).view(1, L) < lengths.view(B, 1)  # (B, L) padding
    return {
        "bool_padding": keep.view(B, 1, 1, L),
        "hf_additive": (~keep).view(B, 1, 1, L).float() * torch.finfo(torch.float32).min,
        "float_full": randn(B, nh, L, L, gen=gen),
        "bool_random_rows": torch.rand(B, 1, L, L, generator=gen) > 0.4,  # some rows fully masked
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask_kind", ["bool_padding", "hf_additive", "float_full", "bool_random_rows"])
@pytest.mark.parametrize("B, L, nh, d", [(2, 7, 2, 16), (1, 1, 1, 32), (3, 20, 3, 80), (1, 70, 2, 64)])
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_attention_masked_grads_match_reference(cpu_isa, gen, dtype, mask_kind, B, L, nh, d, dropout_p):
    H = nh * d
    qkv = _leaf(randn(B, L, 3 * H, dtype=dtype, gen=gen))
    bias = _leaf(randn(3 * H, dtype=dtype, gen=gen, scale=0.5))
    mask = _masks(gen, B, nh, L)[mask_kind]
    if mask.is_floating_point():
        mask = mask.to(dtype) if mask_kind == "float_full" else mask
    g = randn(B, L, H, dtype=dtype, gen=gen)
    args = (nh, d**-0.5, dropout_p, 99, 7)
    got = _grads(lambda q, b: torch.ops.fastbert.attention_masked(q, b, mask, *args), (qkv, bias), g)
    want = _grads(lambda q, b: reference.attention_masked(q, b, mask, *args), (_leaf(qkv), _leaf(bias)), g)
    tol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else ATTN_TOL[dtype]  # softmax recomputed
    _check_grads(
        got, want, {"qkv": tol, "qkv_bias": tol if dtype == torch.float64 else SUM_TOL[dtype]}, ["qkv", "qkv_bias"]
    )


def test_attention_masked_gradcheck(cpu_isa, gen):
    B, L, nh, d = 2, 5, 2, 3
    qkv = _leaf(randn(B, L, 3 * nh * d, dtype=torch.float64, gen=gen))
    bias = _leaf(randn(3 * nh * d, dtype=torch.float64, gen=gen))
    for mask in (torch.rand(B, 1, L, L, generator=gen) > 0.3, randn(B, nh, L, L, dtype=torch.float64, gen=gen)):
        for p in (0.0, 0.3):
            fn = lambda q, b: torch.ops.fastbert.attention_masked(q, b, mask, nh, 0.6, p, 5, 2)[0]
            assert torch.autograd.gradcheck(fn, (qkv, bias))


def test_attention_masked_fully_masked_rows_no_nan(gen):
    qkv, bias = _leaf(randn(2, 4, 24, gen=gen)), _leaf(randn(24, gen=gen))
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    mask[0] = True  # batch 1: every row empty
    gq, gb = _grads(
        lambda q, b: torch.ops.fastbert.attention_masked(q, b, mask, 2, 0.5), (qkv, bias), randn(2, 4, 8, gen=gen)
    )
    assert torch.isfinite(gq).all() and torch.isfinite(gb).all() and not gq[1].any()


def test_attention_masked_opcheck(gen):
    qkv = _leaf(randn(2, 5, 24, gen=gen))
    bias = _leaf(randn(24, gen=gen))
    mask = torch.rand(2, 1, 1, 5, generator=gen) > 0.3
    torch.library.opcheck(torch.ops.fastbert.attention_masked.default, (qkv, bias, mask, 2, 0.5, 0.1, 3, 4))
    out, lse = reference.attention_masked(qkv.detach(), bias.detach(), mask, 2, 0.5, 0.1, 3, 4)
    torch.library.opcheck(
        torch.ops.fastbert.attention_masked_backward.default,
        (randn(2, 5, 8, gen=gen), qkv.detach(), bias.detach(), mask, out, lse, 2, 0.5, 0.1, 3, 4),
    )


@pytest.mark.parametrize(
    "bad, match, exc",
    [
        (dict(grad_out=torch.randn(2, 5, 7)), "grad_out", RuntimeError),
        (dict(qkv=torch.randn(10, 24)), "qkv", RuntimeError),
        (dict(mask=torch.ones(2, 1, 3, 5, dtype=torch.bool)), "mask", RuntimeError),
        (dict(mask=torch.ones(2, 1, 1, 5, dtype=torch.int32)), "mask", RuntimeError),
        (dict(lse=torch.randn(2, 5)), "lse", RuntimeError),
        (dict(dropout_p=-0.1), "dropout_p", ValueError),
    ],
)
def test_attention_masked_backward_bad_args(bad, match, exc):
    args = dict(
        grad_out=torch.randn(2, 5, 8),
        qkv=torch.randn(2, 5, 24),
        qkv_bias=torch.randn(24),
        mask=torch.ones(2, 1, 1, 5, dtype=torch.bool),
        out=torch.randn(2, 5, 8),
        lse=torch.randn(2, 2, 5),
        num_heads=2,
        scale=0.5,
        dropout_p=0.0,
        seed=0,
        offset=0,
    )
    args.update(bad)
    with pytest.raises(exc, match=match):
        torch.ops.fastbert.attention_masked_backward(**args)


# ================================================================ torch.compile


def test_compile_fullgraph_backward_matches_eager(gen):
    """The backward ops trace (fake implementations, AOT autograd) and give eager's gradients."""
    T, H, nh = 20, 32, 2
    cu = torch.tensor([0, 7, 7, 20], dtype=torch.int32)
    ids, pos, types = (
        torch.randint(0, 13, (T,), generator=gen),
        torch.randint(0, 11, (T,), generator=gen),
        torch.randint(0, 2, (T,), generator=gen),
    )
    leaves = [
        _leaf(randn(*s, gen=gen))
        for s in [(13, H), (11, H), (2, H), (H,), (H,), (H, 3 * H), (3 * H,), (H,), (H,), (H,)]
    ]

    def step(word, position, tt, lw, lb, wqkv, bqkv, b2, w2, beta2):
        x, _, _ = ops.embeddings(ids, pos, types, word, position, tt, lw, lb, 1e-12)
        ctx, _ = ops.attention(x @ wqkv, bqkv, cu, 13, nh, 0.25, 0.1, 5, 0)
        y, _, _ = ops.bias_residual_layernorm(ctx, b2, x, w2, beta2, 1e-12)
        return ops.bias_act(y, b2, "gelu").square().sum()

    eager = torch.autograd.grad(step(*leaves), leaves)
    compiled = torch.autograd.grad(torch.compile(step, fullgraph=True)(*leaves), leaves)
    for a, c in zip(eager, compiled):
        torch.testing.assert_close(c, a, atol=1e-5, rtol=1e-5)


def test_backward_with_expanded_grad_outputs(gen):
    """loss = out.sum() hands the backward a stride-0 (expanded) gradient."""
    x, b = _leaf(randn(6, 40, gen=gen)), _leaf(randn(40, gen=gen))
    res, w, beta = _leaf(randn(6, 40, gen=gen)), _leaf(randn(40, gen=gen)), _leaf(randn(40, gen=gen))
    qkv, cu = _leaf(randn(6, 120, gen=gen)), _cu([2, 4])
    cases = [
        (lambda x, b: torch.ops.fastbert.bias_act(x, b, "gelu"), lambda x, b: reference.bias_act(x, b, "gelu"), (x, b)),
        (
            lambda *a: torch.ops.fastbert.bias_residual_layernorm(*a, 1e-12)[0] * torch.arange(40.0),
            lambda *a: reference.bias_residual_layernorm(*a, 1e-12)[0] * torch.arange(40.0),
            (x, b, res, w, beta),
        ),
        (
            lambda q, b: torch.ops.fastbert.attention(q, b, cu, 4, 2, 0.3)[0],
            lambda q, b: reference.attention(q, b, cu, 4, 2, 0.3)[0],
            (qkv, _leaf(randn(120, gen=gen))),
        ),
    ]
    for fused, ref, inputs in cases:
        got = torch.autograd.grad(fused(*inputs).sum(), inputs)
        copies = [_leaf(t) for t in inputs]
        want = torch.autograd.grad(ref(*copies).sum(), copies)
        for a, c in zip(got, want):
            torch.testing.assert_close(a, c, **SUM_TOL[torch.float32])


def _selective_cases(gen):
    """(name, fn, inputs, grad_out) per differentiable op and optional-argument pattern: the C++ autograd
    (csrc/autograd.cpp) maps each forward argument to its input edge, and an absent optional tensor has none."""
    x, b = randn(5, 24, gen=gen), randn(24, gen=gen)
    res, w, beta = randn(5, 24, gen=gen), randn(24, gen=gen), randn(24, gen=gen)
    qkv, bqkv, cu = randn(5, 72, gen=gen), randn(72, gen=gen), _cu([3, 2])
    qkv_pad, mask = randn(2, 3, 72, gen=gen), torch.tensor([[True, True, False], [True, True, True]])
    g, g_pad = randn(5, 24, gen=gen), randn(2, 3, 24, gen=gen)
    emb = [t.detach() if isinstance(t, torch.Tensor) else t for t in _emb_inputs(gen, torch.float32, 9, 24)]
    emb_none = [
        t.detach() if isinstance(t, torch.Tensor) else t for t in _emb_inputs(gen, torch.float32, 9, 24, types=None)
    ]
    brln = lambda *a: torch.ops.fastbert.bias_residual_layernorm(*a, 1e-12)  # noqa: E731
    emb_op = lambda *a: torch.ops.fastbert.embeddings(*a, 1e-12)  # noqa: E731
    return [
        ("bias_act", lambda x, b: torch.ops.fastbert.bias_act(x, b, "gelu_new"), [x, b], g),
        ("brln", brln, [x, b, res, w, beta], g),
        ("brln, no bias", brln, [x, None, res, w, beta], g),
        ("embeddings", emb_op, emb, randn(9, 24, gen=gen)),
        ("embeddings, no token types", emb_op, emb_none, randn(9, 24, gen=gen)),
        ("attention", lambda q, b: torch.ops.fastbert.attention(q, b, cu, 3, 2, 0.3, 0.2, 11, 1), [qkv, bqkv], g),
        ("attention, no bias", lambda q, b: torch.ops.fastbert.attention(q, b, cu, 3, 2, 0.3), [qkv, None], g),
        (
            "attention_masked",
            lambda q, b: torch.ops.fastbert.attention_masked(q, b, mask.view(2, 1, 1, 3), 2, 0.3, 0.2, 11, 1),
            [qkv_pad, bqkv],
            g_pad,
        ),
    ]


@pytest.mark.parametrize("case", range(8))
def test_gradient_of_each_input_alone(gen, case):
    """Each float input requiring grad on its own gets the gradient it gets when all of them do, and the others
    get none: catches a gradient returned to the wrong argument when optional tensors are absent."""
    name, fn, inputs, go = _selective_cases(gen)[case]
    floats = [i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    leaves = [(_leaf(t) if i in floats else t) for i, t in enumerate(inputs)]
    full = dict(zip(floats, _grads(fn, leaves, go)))
    for i in floats:
        alone = [(_leaf(t) if j == i else t) for j, t in enumerate(inputs)]
        (got,) = _grads(fn, alone, go)
        torch.testing.assert_close(got, full[i], **SUM_TOL[torch.float32], msg=lambda m: f"{name}, input {i}: {m}")


def test_no_graph_without_grad(gen):
    """Without an input that requires grad, or under no_grad, the ops record nothing."""
    x, b = randn(5, 24, gen=gen), _leaf(randn(24, gen=gen))
    assert torch.ops.fastbert.bias_act(x, b.detach(), "gelu").grad_fn is None
    with torch.no_grad():
        assert torch.ops.fastbert.bias_act(_leaf(x), b, "gelu").grad_fn is None
    out, mean, rstd = torch.ops.fastbert.bias_residual_layernorm(x, b, _leaf(x), b.detach(), b.detach(), 1e-12)
    assert "fastbert" in out.grad_fn.name() and not mean.requires_grad and not rstd.requires_grad


def test_every_backward_op_has_the_kernels_its_forward_has():
    """The C++ autograd has no reference fallback: a device with a forward kernel must have the backward one."""
    for name in fb_autograd.DIFFERENTIABLE_OPS:
        for key in ("CPU", "CUDA"):
            if torch._C._dispatch_has_kernel_for_dispatch_key(f"fastbert::{name}", key):
                assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastbert::{name}_backward", key), (name, key)
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastbert::{name}", "Autograd"), name
