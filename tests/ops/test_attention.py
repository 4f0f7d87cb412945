"""fastbert::attention (packed, ragged) and fastbert::attention_masked (padded, explicit mask): CPU kernels
against fastbert/ops/reference.py, on every instruction set this processor runs.

Tolerances (kernel vs the reference evaluated in float64, values of order 1):
  float64  1e-10      float32  2e-5 (out and lse)      bfloat16 / float16: the reference on the same
  rounded inputs, then out within 2 ulps of the storage type (rtol 1.6e-2 / 2e-3), lse 1e-4 (fp32 stats).
  bfloat16 on the AVX512-BF16 dot-product path (avx512 on a processor with avx512_bf16) rounds Q * scale, K, V
  (bias added) and the probabilities to bf16 before the dot products: out keeps the bf16 tolerance, lse 1e-2
  (scores of order 1-5 lose ~2^-9 relative per operand; ~5e-3 measured).
"""

import math

import pytest
import torch

import fastbert
from fastbert.ops import reference
from tests.helpers import TOLERANCES

if not fastbert.ops.has_kernel("attention", "cpu"):
    pytest.skip("fastbert._C is not built (python setup.py build_ext --inplace)", allow_module_level=True)

TOL = {dtype: dict(atol=a, rtol=r) for dtype, (a, r) in TOLERANCES.items()}
LSE_TOL = {
    torch.float64: dict(atol=1e-6, rtol=1e-6),
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.bfloat16: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=1e-4, rtol=1e-4),
}


def lse_tol(dtype):
    if dtype == torch.bfloat16 and fastbert.ops.cpu_isa() == "avx512" and fastbert.ops.cpu_bf16_dot():
        return dict(atol=1e-2, rtol=1e-2)
    return LSE_TOL[dtype]


def cu_of(lengths):
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
    return cu


def make_qkv(shape, dtype, seed, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(*shape, generator=g, dtype=torch.float64) * spread).to(dtype)
    bias = (torch.randn(shape[-1], generator=g, dtype=torch.float64) * 0.5).to(dtype)
    return qkv, bias


def ref_inputs(t, dtype):
    """The reference runs on the kernel's (rounded) inputs, in float64 when the kernel accumulates in fp32/fp64."""
    return None if t is None else t.double()


def check_packed(
    lengths,
    nh,
    d,
    dtype,
    scale=None,
    bias=True,
    dropout_p=0.0,
    seed=0,
    offset=0,
    spread=1.0,
    max_seqlen=None,
    tol_scale=1.0,
):
    H = nh * d
    cu = cu_of(lengths)
    qkv, b = make_qkv((int(cu[-1]), 3 * H), dtype, seed=hash((tuple(lengths), nh, d)) % 1000, spread=spread)
    b = b if bias else None
    scale = 1 / math.sqrt(d) if scale is None else scale
    mx = max(lengths, default=0) if max_seqlen is None else max_seqlen
    out, lse = torch.ops.fastbert.attention(qkv, b, cu, mx, nh, scale, dropout_p, seed, offset)
    ref_out, ref_lse = reference.attention(
        qkv.double(), ref_inputs(b, dtype), cu, mx, nh, scale, dropout_p, seed, offset
    )
    assert out.shape == (int(cu[-1]), H) and out.dtype == dtype
    assert lse.shape == (nh, int(cu[-1])) and lse.dtype == torch.float32
    tol = {k: v * tol_scale for k, v in TOL[dtype].items()}
    torch.testing.assert_close(out.double(), ref_out, **tol)
    torch.testing.assert_close(lse.double(), ref_lse.double(), **lse_tol(dtype))
    return out, lse


# ---------------------------------------------------------------- packed: values

LENGTHS = [
    [1],  # batch of 1, one token
    [7],
    [5, 0, 1, 33],  # an empty sequence, a one-token sequence
    [0, 0, 3],  # empty first
    [130, 0, 257, 1, 64],  # crosses the 256-key block, odd lengths
    SHORT_MANY := [9, 144, 1, 0, 60, 33, 90, 12, 5, 140, 77],  # many sequences <= 144: a task per sequence, every head
]


@pytest.mark.parametrize("lengths", LENGTHS, ids=lambda l: "-".join(map(str, l)))
@pytest.mark.parametrize("d", [16, 24, 32, 64, 80, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_packed_matches_reference(cpu_isa, lengths, d, dtype):
    nh = 3 if d <= 64 else 2
    out, lse = check_packed(lengths, nh, d, dtype)
    # empty sequences write nothing; rows of real tokens are finite
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("d", [24, 64])
def test_packed_half_storage(cpu_isa, dtype, d):
    check_packed([19, 0, 140, 1], 2, d, dtype)


def test_packed_long_sequence_online_softmax(cpu_isa):
    # 700 keys = three key blocks; a large spread makes the running max grow from block to block. Scores of
    # order 70 and values of order 10: fp32 rounding of the scores alone moves out by ~1e-4 (tolerance x 10).
    check_packed([700, 3], 2, 64, torch.float32, spread=3.0, tol_scale=10)
    check_packed([600], 1, 32, torch.float64, spread=3.0)


def test_packed_head_dim_beyond_128(cpu_isa):
    # no cap on the head size: d = 256 and an odd 130
    check_packed([50, 3], 1, 256, torch.float32)
    check_packed([17], 2, 130, torch.float64)


def test_packed_no_bias_other_scale_one_head(cpu_isa):
    check_packed([9, 40, 2], 1, 48, torch.float32, bias=False, scale=0.37)
    check_packed([9, 40, 2], 4, 8, torch.float64, bias=False, scale=-1.3)


def test_packed_max_seqlen_larger_than_needed(cpu_isa):
    check_packed([4, 11], 2, 16, torch.float32, max_seqlen=512)


@pytest.mark.parametrize("cu", [[0], [0, 0], [0, 0, 0]])
def test_packed_no_tokens(cpu_isa, cu):
    qkv = torch.randn(0, 3 * 32)
    out, lse = torch.ops.fastbert.attention(qkv, None, torch.tensor(cu, dtype=torch.int32), 0, 2, 0.25)
    assert out.shape == (0, 32) and lse.shape == (2, 0)


def test_packed_noncontiguous_inputs(cpu_isa):
    lengths, nh, d = [6, 0, 21], 2, 32
    cu = cu_of(lengths)
    qkv, b = make_qkv((27, 3 * nh * d), torch.float32, seed=3)
    wide = torch.randn(27, 2 * 3 * nh * d)
    wide[:, ::2] = qkv  # qkv as a strided view
    bias_view = torch.stack([b, b], 1)[:, 0]
    assert not wide[:, ::2].is_contiguous() and not bias_view.is_contiguous()
    out, lse = torch.ops.fastbert.attention(wide[:, ::2], bias_view, cu, 21, nh, 0.2)
    ref_out, ref_lse = torch.ops.fastbert.attention(qkv, b, cu, 21, nh, 0.2)
    torch.testing.assert_close(out, ref_out, atol=0, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=0, rtol=0)


def test_ops_wrapper_uses_kernel():
    lengths, nh, d = [3, 8], 2, 16
    cu = cu_of(lengths)
    qkv, b = make_qkv((11, 3 * nh * d), torch.float32, seed=5)
    a = fastbert.ops.attention(qkv, b, cu, 8, nh, 0.25)
    k = torch.ops.fastbert.attention(qkv, b, cu, 8, nh, 0.25)
    torch.testing.assert_close(a, k, atol=0, rtol=0)


# ---------------------------------------------------------------- dropout: the mask is bit-exact


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("seed,offset", [(0, 0), (1234, 99), (2**40 + 17, 2**33 + 5), (-7, 3)])
def test_packed_dropout_matches_reference(cpu_isa, p, seed, offset):
    check_packed([37, 0, 300, 1], 2, 32, torch.float32, dropout_p=p, seed=seed, offset=offset)
    check_packed([37, 5], 3, 16, torch.float64, dropout_p=p, seed=seed, offset=offset)
    check_packed(SHORT_MANY, 3, 16, torch.float32, dropout_p=p, seed=seed, offset=offset)


def reveal_mask(lengths, nh, p, seed, offset):
    """q = 0 gives uniform probabilities; V = one-hot of the key index; so out * n * (1 - p) is the keep mask."""
    d = max(lengths)
    H = nh * d
    cu = cu_of(lengths)
    T = int(cu[-1])
    qkv = torch.zeros(T, 3 * H, dtype=torch.float64)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        for h in range(nh):
            qkv[s:e, 2 * H + h * d : 2 * H + h * d + (e - s)] = torch.eye(e - s, dtype=torch.float64)
    out, _ = torch.ops.fastbert.attention(qkv, None, cu, d, nh, 1.0, p, seed, offset)
    masks = []
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        o = out[s:e].view(e - s, nh, d)[:, :, : e - s].transpose(0, 1)  # (nh, n, n)
        got = (o * (e - s) * (1 - p)).round()
        assert ((got == 0) | (got == 1)).all()
        heads = torch.arange(nh).view(-1, 1, 1)
        rows = heads * T + torch.arange(s, e).view(1, -1, 1)
        cols = torch.arange(e - s).view(1, 1, -1)
        masks.append((got.bool(), reference.dropout_keep_mask(seed, offset, rows, cols, p)))
    return masks


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_mask_bit_exact(cpu_isa, p):
    masks = reveal_mask([37, 1, 64, 0, 20], 2, p, seed=2**35 + 3, offset=11)
    for got, want in masks:
        assert torch.equal(got, want)
    kept = torch.cat([g.flatten() for g, _ in masks]).double().mean().item()
    assert abs(kept - (1 - p)) < 0.05


def test_dropout_mask_depends_on_seed_and_offset(cpu_isa):
    a = reveal_mask([40], 1, 0.5, seed=1, offset=0)[0][0]
    b = reveal_mask([40], 1, 0.5, seed=2, offset=0)[0][0]
    c = reveal_mask([40], 1, 0.5, seed=1, offset=1)[0][0]
    assert not torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------- masked (padded) variant


def check_masked(
    B,
    L,
    nh,
    d,
    mask,
    dtype=torch.float32,
    dropout_p=0.0,
    seed=0,
    offset=0,
    ref_dtype=torch.float64,
    bias=True,
    scale=None,
):
    qkv, b = make_qkv((B, L, 3 * nh * d), dtype, seed=B * 100 + L)
    b = b if bias else None
    scale = 1 / math.sqrt(d) if scale is None else scale
    out, lse = torch.ops.fastbert.attention_masked(qkv, b, mask, nh, scale, dropout_p, seed, offset)
    rmask = mask if mask.dtype == torch.bool else mask.to(ref_dtype)
    ref_out, ref_lse = reference.attention_masked(
        qkv.to(ref_dtype), None if b is None else b.to(ref_dtype), rmask, nh, scale, dropout_p, seed, offset
    )
    assert out.shape == (B, L, nh * d) and out.dtype == dtype
    assert lse.shape == (B, nh, L) and lse.dtype == torch.float32
    torch.testing.assert_close(out.to(ref_dtype), ref_out, **TOL[dtype])
    torch.testing.assert_close(lse.double(), ref_lse.double(), **lse_tol(dtype))
    return out, lse


def bool_mask(shape, seed, keep=0.7):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) < keep


MASK_SHAPES = ["B11L", "B1LL", "1hLL", "BhLL", "LL", "L", "Bh1L"]


def shape_of(name, B, nh, L):
    return {
        "B11L": (B, 1, 1, L),
        "B1LL": (B, 1, L, L),
        "1hLL": (1, nh, L, L),
        "BhLL": (B, nh, L, L),
        "LL": (L, L),
        "L": (L,),
        "Bh1L": (B, nh, 1, L),
    }[name]


@pytest.mark.parametrize("shape", MASK_SHAPES)
@pytest.mark.parametrize("d", [16, 64, 80])
def test_masked_bool(cpu_isa, shape, d):
    B, L, nh = 3, 37, 2
    mask = bool_mask(shape_of(shape, B, nh, L), seed=d)
    check_masked(B, L, nh, d, mask)
    B = 9  # enough sequences for a task per sequence, every head
    check_masked(B, L, nh, d, bool_mask(shape_of(shape, B, nh, L), seed=d + 1))


@pytest.mark.parametrize("shape", MASK_SHAPES)
def test_masked_additive(cpu_isa, shape):
    B, L, nh, d = 2, 29, 3, 24
    g = torch.Generator().manual_seed(1)
    s = shape_of(shape, B, nh, L)
    mask = torch.randn(*s, generator=g) * 2
    mask = mask.masked_fill(torch.rand(*s, generator=g) < 0.3, float("-inf"))
    check_masked(B, L, nh, d, mask)
    check_masked(B, L, nh, d, mask.double(), dtype=torch.float64)


def test_masked_fully_masked_rows(cpu_isa):
    B, L, nh, d = 2, 19, 2, 32
    keep = bool_mask((B, nh, L, L), seed=4)
    keep[0, 1, 3] = False  # one query row of one head sees nothing
    keep[1, :, :, :] = False  # a whole sequence sees nothing
    out, lse = check_masked(B, L, nh, d, keep)
    assert torch.isneginf(lse[0, 1, 3]) and torch.isneginf(lse[1]).all()
    assert (out[1] == 0).all() and (out[0, 3, 32:64] == 0).all()
    add = torch.zeros(B, nh, L, L).masked_fill(~keep, float("-inf"))
    check_masked(B, L, nh, d, add)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_masked_dtype_min_gives_uniform_rows(cpu_isa, dtype):
    # HF's extended mask: (1 - keep) * finfo.min. A row with every key at finfo.min is a uniform softmax (HF's
    # numbers), not a zero row. Compared with the reference in the kernel's own dtype, where that rounding lives.
    B, L, nh, d = 2, 23, 2, 16
    keep = bool_mask((B, 1, 1, L), seed=5, keep=0.6)
    keep[1] = False
    mask = (~keep).to(dtype) * torch.finfo(dtype).min
    out, lse = check_masked(B, L, nh, d, mask, dtype=dtype, ref_dtype=dtype)
    qkv, b = make_qkv((B, L, 3 * nh * d), dtype, seed=B * 100 + L)
    v = (qkv + b)[1, :, 2 * nh * d :]
    torch.testing.assert_close(out[1], v.mean(0, keepdim=True).expand(L, -1), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_masked_half_storage(cpu_isa, dtype):
    B, L, nh = 2, 33, 2
    mask = torch.randn(B, 1, L, L).to(dtype)
    check_masked(B, L, nh, 32, mask, dtype=dtype)
    check_masked(B, L, nh, 32, bool_mask((B, 1, 1, L), seed=2), dtype=dtype)


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_masked_rows_empty_in_one_key_block(cpu_isa, kind):
    # 300 keys = two key blocks (256 + 44). Rows whose first block is fully masked (running max -inf, then
    # finite), rows whose second block is fully masked, and a row with nothing kept.
    B, L, nh, d = 1, 300, 2, 32
    keep = bool_mask((B, nh, L, L), seed=11)
    keep[0, :, 0::3, :256] = False
    keep[0, :, 1::3, 256:] = False
    keep[0, 1, 5, :] = False
    mask = keep if kind == "bool" else torch.zeros(B, nh, L, L).masked_fill(~keep, float("-inf"))
    out, lse = check_masked(B, L, nh, d, mask)
    assert torch.isneginf(lse[0, 1, 5]) and torch.isfinite(lse[0, 0]).all()


def test_masked_long_and_no_bias(cpu_isa):
    check_masked(1, 300, 2, 64, bool_mask((1, 1, 1, 300), seed=7), bias=False, scale=0.3)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_masked_dropout_matches_reference(cpu_isa, p):
    B, L, nh, d = 2, 45, 3, 16
    mask = bool_mask((B, 1, L, L), seed=8)
    check_masked(B, L, nh, d, mask, dropout_p=p, seed=2**33 + 1, offset=77)
    check_masked(B, L, nh, d, mask, dtype=torch.float64, dropout_p=p, seed=5, offset=0)


def test_masked_noncontiguous(cpu_isa):
    B, L, nh, d = 2, 17, 2, 16
    qkv, b = make_qkv((B, L, 3 * nh * d), torch.float32, seed=9)
    mask = torch.randn(B, nh, L, L)
    out, lse = torch.ops.fastbert.attention_masked(
        qkv.transpose(0, 1).contiguous().transpose(0, 1),
        b,
        mask.transpose(-1, -2).contiguous().transpose(-1, -2),
        nh,
        0.25,
    )
    ref_out, ref_lse = torch.ops.fastbert.attention_masked(qkv, b, mask, nh, 0.25)
    torch.testing.assert_close(out, ref_out, atol=0, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=0, rtol=0)


@pytest.mark.parametrize("B,L", [(0, 5), (2, 0)])
def test_masked_empty(cpu_isa, B, L):
    out, lse = torch.ops.fastbert.attention_masked(
        torch.randn(B, L, 48), None, torch.ones(B, 1, 1, L, dtype=torch.bool), 2, 0.25
    )
    assert out.shape == (B, L, 16) and lse.shape == (B, 2, L)


# ---------------------------------------------------------------- opcheck


def test_opcheck_attention():
    cu = cu_of([5, 0, 12])
    qkv, b = make_qkv((17, 3 * 2 * 16), torch.float32, seed=1)
    torch.library.opcheck(torch.ops.fastbert.attention.default, (qkv, b, cu, 12, 2, 0.25, 0.0, 0, 0))
    torch.library.opcheck(torch.ops.fastbert.attention.default, (qkv, None, cu, 12, 2, 0.25, 0.3, 5, 1))


def test_opcheck_attention_masked():
    qkv, b = make_qkv((2, 9, 3 * 2 * 16), torch.float32, seed=1)
    torch.library.opcheck(
        torch.ops.fastbert.attention_masked.default, (qkv, b, bool_mask((2, 1, 1, 9), seed=1), 2, 0.25, 0.0, 0, 0)
    )
    torch.library.opcheck(
        torch.ops.fastbert.attention_masked.default, (qkv, None, torch.randn(2, 2, 9, 9), 2, 0.25, 0.2, 3, 4)
    )


# ---------------------------------------------------------------- bad arguments


def packed_args(**over):
    nh, d = 2, 16
    args = dict(
        qkv=torch.randn(10, 3 * nh * d),
        qkv_bias=torch.randn(3 * nh * d),
        cu_seqlens=cu_of([4, 6]),
        max_seqlen=6,
        num_heads=nh,
        scale=0.25,
        dropout_p=0.0,
        seed=0,
        offset=0,
    )
    args.update(over)
    return tuple(args.values())


BAD_PACKED = [
    (dict(qkv=torch.randn(10, 3, 32)), RuntimeError, "qkv"),
    (dict(qkv=torch.randn(10, 95)), RuntimeError, "qkv"),
    (dict(qkv=torch.randn(10, 0)), RuntimeError, "qkv"),
    (dict(qkv=torch.randint(0, 5, (10, 96))), RuntimeError, "qkv"),
    (dict(qkv_bias=torch.randn(95)), RuntimeError, "qkv_bias"),
    (dict(qkv_bias=torch.randn(96, 1)), RuntimeError, "qkv_bias"),
    (dict(qkv_bias=torch.randn(96, dtype=torch.float64)), RuntimeError, "qkv_bias"),
    (dict(cu_seqlens=cu_of([4, 6]).long()), RuntimeError, "cu_seqlens"),
    (dict(cu_seqlens=cu_of([4, 6]).view(1, 3)), RuntimeError, "cu_seqlens"),
    (dict(cu_seqlens=torch.zeros(0, dtype=torch.int32)), RuntimeError, "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([1, 4, 10], dtype=torch.int32)), ValueError, "cu_seqlens[0]"),
    (dict(cu_seqlens=torch.tensor([0, 6, 4, 10], dtype=torch.int32)), ValueError, "nondecreasing"),
    (dict(cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32)), ValueError, "cu_seqlens[-1]"),
    (dict(max_seqlen=5), ValueError, "max_seqlen"),
    (dict(max_seqlen=-1), ValueError, "max_seqlen"),
    (dict(num_heads=0), ValueError, "num_heads"),
    (dict(num_heads=5), RuntimeError, "num_heads"),
    (dict(dropout_p=1.0), ValueError, "dropout_p"),
    (dict(dropout_p=-0.1), ValueError, "dropout_p"),
]


@pytest.mark.parametrize("over,exc,name", BAD_PACKED, ids=lambda x: x if isinstance(x, str) else None)
def test_packed_bad_arguments(over, exc, name):
    with pytest.raises(exc, match=r"attention: .*" + name.replace("[", r"\[").replace("]", r"\]")):
        torch.ops.fastbert.attention(*packed_args(**over))


def masked_args(**over):
    B, L, nh, d = 2, 5, 2, 16
    args = dict(
        qkv=torch.randn(B, L, 3 * nh * d),
        qkv_bias=torch.randn(3 * nh * d),
        mask=torch.ones(B, 1, 1, L, dtype=torch.bool),
        num_heads=nh,
        scale=0.25,
        dropout_p=0.0,
        seed=0,
        offset=0,
    )
    args.update(over)
    return tuple(args.values())


BAD_MASKED = [
    (dict(qkv=torch.randn(10, 96)), RuntimeError, "qkv"),
    (dict(qkv=torch.randn(2, 5, 95)), RuntimeError, "qkv"),
    (dict(qkv_bias=torch.randn(48)), RuntimeError, "qkv_bias"),
    (dict(mask=torch.ones(2, 1, 6, 5, dtype=torch.bool)), RuntimeError, "mask"),
    (dict(mask=torch.ones(3, 1, 1, 5)), RuntimeError, "mask"),
    (dict(mask=torch.ones(1, 2, 1, 1, 5)), RuntimeError, "mask"),
    (dict(mask=torch.ones(2, 1, 1, 5, dtype=torch.int64)), RuntimeError, "mask"),
    (dict(num_heads=-1), ValueError, "num_heads"),
    (dict(dropout_p=1.5), ValueError, "dropout_p"),
]


@pytest.mark.parametrize("over,exc,name", BAD_MASKED, ids=lambda x: x if isinstance(x, str) else None)
def test_masked_bad_arguments(over, exc, name):
    with pytest.raises(exc, match=r"attention_masked: .*" + name):
        torch.ops.fastbert.attention_masked(*masked_args(**over))


def test_same_bits_at_any_thread_count(cpu_isa):
    # each softmax row is computed by one task in a fixed order: results do not depend on the thread count
    # (which changes how the work is split into tasks)
    # (which changes how the work is split into tasks: [70, 0, 9] into row chunks, SHORT_MANY into a task per
    # sequence for every head at 1 and 2 threads, per (sequence, head) at 3)
    before = torch.get_num_threads()
    for lengths, nh in (([70, 0, 9], 1), (SHORT_MANY, 2)):
        d = 32
        cu = cu_of(lengths)
        qkv, b = make_qkv((int(cu[-1]), 3 * nh * d), torch.float32, seed=12)
        try:
            results = []
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)
                results.append(torch.ops.fastbert.attention(qkv, b, cu, max(lengths), nh, 0.2, 0.2, 9, 1))
        finally:
            torch.set_num_threads(before)
        for out, lse in results[1:]:
            assert torch.equal(out, results[0][0]) and torch.equal(lse, results[0][1])


# ---------------------------------------------------------------- bfloat16: the AVX512-BF16 dot-product path
#
# On avx512 with avx512_bf16, bfloat16 attention stages Q * scale, K and V (bias added) in bf16 and runs QK^T and
# PV as bf16 dot products accumulating in fp32, with P rounded to bf16 (csrc/cpu/attention.cpp). Checked here
# against the float64 reference on the same bf16 inputs, and against the fp32-staged path (the switch
# fastbert.ops.set_cpu_bf16_dot(False), same ISA):
#   out: the bf16 tolerance (atol = rtol = 1.6e-2, values of order 1), and its RMS error at most 2.5 x the
#        fp32-staged path's (which rounds only the output; ~1.2-2.2 x measured, the max error 1-5 x);
#   lse: per row within 2^-8 * scale * max_j sum_c |q_c k_jc| (two bf16 roundings of the score's operands) + 1e-5.

needs_bf16_dot = pytest.mark.skipif(
    not fastbert.ops.cpu_bf16_dot_supported(), reason="the processor has no avx512_bf16"
)


@pytest.fixture
def bf16_dot():
    """avx512 kernels with the dot-product path on; restores the previous choice."""
    isa, on = fastbert.ops.cpu_isa(), fastbert.ops.cpu_bf16_dot()
    fastbert.ops.set_cpu_isa("avx512")
    fastbert.ops.set_cpu_bf16_dot(True)
    yield
    fastbert.ops.set_cpu_isa(isa)
    fastbert.ops.set_cpu_bf16_dot(on)


def both_paths(fn):
    """fn() on the dot-product path, then on the fp32-staged path of the same ISA."""
    dot = fn()
    fastbert.ops.set_cpu_bf16_dot(False)
    try:
        staged = fn()
    finally:
        fastbert.ops.set_cpu_bf16_dot(True)
    return dot, staged


def rms(x):
    return x.double().pow(2).mean().sqrt().item()


def lse_bound(q, k, scale):
    """Per query row, a bound on |lse error| of each row: 2^-8 * |scale| * max over keys of sum_c |q_c| |k_c|."""
    return 2.0**-8 * abs(scale) * (q.abs() @ k.abs().transpose(-1, -2)).amax(-1) + 1e-5


def check_dot_against_staged(got, staged, ref, tol_scale=1.0):
    out, lse = got
    torch.testing.assert_close(out.double(), ref[0], **{k: v * tol_scale for k, v in TOL[torch.bfloat16].items()})
    err, err_staged = rms(out.double() - ref[0]), rms(staged[0].double() - ref[0])
    assert err <= 2.5 * tol_scale * err_staged + 1e-6, (err, err_staged)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref[1]))


def packed_heads(qkv, bias, nh, d, which):
    """(nh, T, d) of Q (which = 0) or K (which = 1), bias added, in float64."""
    x = qkv.double() + (0 if bias is None else bias.double())
    H = nh * d
    return x[:, which * H : (which + 1) * H].view(-1, nh, d).transpose(0, 1)


def check_dot_packed(lengths, nh, d, dropout_p=0.0, seed=0, offset=0, bias=True, spread=1.0, scale=None, tol_scale=1.0):
    cu = cu_of(lengths)
    qkv, b = make_qkv(
        (int(cu[-1]), 3 * nh * d), torch.bfloat16, seed=hash((tuple(lengths), nh, d)) % 1000, spread=spread
    )
    b = b if bias else None
    scale = 1 / math.sqrt(d) if scale is None else scale
    mx = max(lengths, default=0)
    args = (cu, mx, nh, scale, dropout_p, seed, offset)
    got, staged = both_paths(lambda: torch.ops.fastbert.attention(qkv, b, *args))
    ref = reference.attention(qkv.double(), ref_inputs(b, torch.bfloat16), *args)
    check_dot_against_staged(got, staged, ref, tol_scale)
    q, k = packed_heads(qkv, b, nh, d, 0), packed_heads(qkv, b, nh, d, 1)
    lse, ref_lse = got[1].double(), ref[1].double()
    bound = torch.zeros_like(lse)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if e > s:
            bound[:, s:e] = lse_bound(q[:, s:e], k[:, s:e], scale)
    finite = torch.isfinite(ref_lse)
    assert ((lse - ref_lse).abs()[finite] <= bound[finite]).all(), (lse - ref_lse).abs().max()
    return got


DOT_LENGTHS = [[1], [7], [33], [129], [300], [5, 0, 1, 33], [130, 0, 257, 1, 64], [700, 3], SHORT_MANY]


@needs_bf16_dot
@pytest.mark.parametrize("lengths", DOT_LENGTHS, ids=lambda l: "-".join(map(str, l)))
@pytest.mark.parametrize("d", [16, 24, 32, 40, 64, 72, 80, 128])
def test_bf16_dot_packed(bf16_dot, lengths, d):
    nh = 3 if d <= 64 else 2
    out, lse = check_dot_packed(lengths, nh, d)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()


@needs_bf16_dot
def test_bf16_dot_odd_head_dim_no_bias_other_scale(bf16_dot):
    check_dot_packed([9, 40, 2], 1, 48, bias=False, scale=0.37)
    check_dot_packed([17, 3], 2, 130, scale=-0.2)  # d = 130: a 16-dim tail, 65 pairs
    check_dot_packed([20, 5], 4, 8)
    # running max grows over three key blocks; scores of order 10: their bf16 operands move out by up to ~5e-2,
    # against the output rounding alone of the fp32-staged path (3.4 x its RMS error)
    check_dot_packed([700], 1, 64, spread=2.0, tol_scale=4)


@needs_bf16_dot
@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("seed,offset", [(0, 0), (2**40 + 17, 2**33 + 5), (-7, 3)])
def test_bf16_dot_packed_dropout(bf16_dot, p, seed, offset):
    check_dot_packed([37, 0, 300, 1], 2, 32, dropout_p=p, seed=seed, offset=offset)
    check_dot_packed([129, 7], 3, 64, dropout_p=p, seed=seed, offset=offset)
    check_dot_packed(SHORT_MANY, 2, 32, dropout_p=p, seed=seed, offset=offset)


@needs_bf16_dot
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_bf16_dot_dropout_mask_bit_exact(bf16_dot, p):
    # as reveal_mask, in bf16: P = 1 or 0 exactly, out = 1 / (n (1 - p)) rounded to bf16 (within 2^-8)
    lengths, nh, seed, offset = [37, 1, 64, 0, 20, 300], 2, 2**35 + 3, 11
    d = 64
    H = nh * d
    cu = cu_of(lengths)
    T = int(cu[-1])
    qkv = torch.zeros(T, 3 * H, dtype=torch.bfloat16)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        for h in range(nh):
            for j in range(e - s):
                qkv[s + j, 2 * H + h * d + j % d] = 1.0  # V = one-hot of key j mod 64
    out, _ = torch.ops.fastbert.attention(qkv, None, cu, max(lengths), nh, 1.0, p, seed, offset)
    kept_total = []
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        n = e - s
        if n == 0:
            continue
        heads = torch.arange(nh).view(-1, 1, 1)
        rows = heads * T + torch.arange(s, e).view(1, -1, 1)
        want = reference.dropout_keep_mask(seed, offset, rows, torch.arange(n).view(1, 1, -1), p).double()
        # out[i, h, c] * n * (1 - p) = number of kept keys j with j % 64 == c
        counts = torch.zeros(nh, n, d, dtype=torch.float64)
        counts.index_add_(2, torch.arange(n) % d, want)
        got = out[s:e].view(n, nh, d).transpose(0, 1).double() * n * (1 - p)
        assert torch.equal(got.round(), counts), (s, e)
        kept_total.append(want.flatten())
    kept = torch.cat(kept_total).mean().item()
    assert abs(kept - (1 - p)) < 0.05


def check_dot_masked(B, L, nh, d, mask, dropout_p=0.0, seed=0, offset=0):
    qkv, b = make_qkv((B, L, 3 * nh * d), torch.bfloat16, seed=B * 100 + L)
    scale = 1 / math.sqrt(d)
    args = (nh, scale, dropout_p, seed, offset)
    got, staged = both_paths(lambda: torch.ops.fastbert.attention_masked(qkv, b, mask, *args))
    rmask = mask if mask.dtype == torch.bool else mask.double()
    ref = reference.attention_masked(qkv.double(), b.double(), rmask, *args)
    check_dot_against_staged(got, staged, ref)
    H = nh * d
    x = qkv.double() + b.double()
    q = x[..., :H].view(B, L, nh, d).transpose(1, 2)
    k = x[..., H : 2 * H].view(B, L, nh, d).transpose(1, 2)
    bound = lse_bound(q, k, scale)
    finite = torch.isfinite(ref[1])
    assert ((got[1].double() - ref[1].double()).abs()[finite] <= bound[finite]).all()
    return got


@needs_bf16_dot
@pytest.mark.parametrize("kind", ["bool", "additive"])
@pytest.mark.parametrize("L,d", [(1, 64), (37, 16), (129, 80), (300, 32), (300, 72)])
def test_bf16_dot_masked(bf16_dot, kind, L, d):
    B, nh = 2, 2
    keep = bool_mask((B, nh, L, L), seed=L + d)
    keep[..., 0] = True  # no fully masked rows here (see below)
    if kind == "bool":
        mask = keep
    else:
        g = torch.Generator().manual_seed(d)
        mask = (torch.randn(B, 1, L, L, generator=g) * 2).masked_fill(~keep, float("-inf"))
    check_dot_masked(B, L, nh, d, mask)


@needs_bf16_dot
@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_bf16_dot_masked_fully_masked_rows(bf16_dot, kind):
    # 300 keys = two key blocks: rows empty in the first block, in the second, rows with nothing kept, and a
    # sequence with nothing kept at all -> zero rows, lse = -inf
    B, L, nh, d = 2, 300, 2, 32
    keep = bool_mask((B, nh, L, L), seed=11)
    keep[0, :, 0::3, :256] = False
    keep[0, :, 1::3, 256:] = False
    keep[0, 1, 5, :] = False
    keep[1] = False
    mask = keep if kind == "bool" else torch.zeros(B, nh, L, L).masked_fill(~keep, float("-inf"))
    out, lse = check_dot_masked(B, L, nh, d, mask)
    assert torch.isneginf(lse[0, 1, 5]) and torch.isneginf(lse[1]).all() and torch.isfinite(lse[0, 0]).all()
    assert (out[1] == 0).all() and (out[0, 5, d : 2 * d] == 0).all()


@needs_bf16_dot
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_bf16_dot_masked_dropout(bf16_dot, p):
    B, L, nh, d = 2, 45, 3, 16
    check_dot_masked(B, L, nh, d, bool_mask((B, 1, L, L), seed=8), dropout_p=p, seed=2**33 + 1, offset=77)
    check_dot_masked(1, 300, 2, 64, bool_mask((1, 1, 1, 300), seed=3), dropout_p=p, seed=5, offset=0)


@needs_bf16_dot
def test_bf16_dot_path_is_taken_only_where_it_should(bf16_dot):
    lengths, nh, d = [40, 7], 2, 64
    cu = cu_of(lengths)
    qkv, b = make_qkv((47, 3 * nh * d), torch.bfloat16, seed=21)
    run = lambda q=qkv, bb=b: torch.ops.fastbert.attention(q, bb, cu, 40, nh, 0.125)
    dot, staged = both_paths(run)
    assert not torch.equal(dot[0], staged[0])
    # other ISAs and dtypes ignore the switch: the same bits on and off
    for isa in [i for i in fastbert.ops.supported_cpu_isas() if i != "avx512"]:
        fastbert.ops.set_cpu_isa(isa)
        a, z = both_paths(run)
        assert torch.equal(a[0], z[0]) and torch.equal(a[1], z[1])
    fastbert.ops.set_cpu_isa("avx512")
    for dtype in (torch.float32, torch.float16):
        a, z = both_paths(lambda: torch.ops.fastbert.attention(qkv.to(dtype), b.to(dtype), cu, 40, nh, 0.125))
        assert torch.equal(a[0], z[0]) and torch.equal(a[1], z[1])
    # a call autograd records keeps the fp32-staged path: its backward recomputes the scores in fp32 against lse
    q = qkv.clone().requires_grad_()
    out, lse = run(q)
    assert torch.equal(out.detach(), staged[0]) and torch.equal(lse, staged[1])


@needs_bf16_dot
@pytest.mark.parametrize("B,L", [(2, 45), (16, 20), (1, 300)])  # tasks per head, tasks of every head, two key blocks
def test_bf16_dot_softmax_by_row_groups_matches_row_by_row(bf16_dot, B, L):
    """Without mask or dropout the softmax runs six rows at a time; with a mask, row by row. An all-true mask must
    give the same bits, including query rows whose scores overflow to -inf (nothing kept: zero rows, lse -inf)
    beside rows with finite scores in the same group of six, which sends that group back to the row-by-row step.
    Two threads, so that 16 sequences take the tasks of every head."""
    nh, d = 3, 32
    H = nh * d
    qkv, b = make_qkv((B * L, 3 * H), torch.bfloat16, seed=B + L)
    # sequence 0, head 0: every key's first dim huge and negative; the first 3 queries' first dim huge -> those
    # rows' scores all -inf; the other queries' scores finite (the same large shift for every key)
    qkv[:L, H] = -1e38
    qkv[:3, 0] = 1e38
    cu = torch.arange(B + 1, dtype=torch.int32) * L
    keep = torch.ones(B, 1, L, L, dtype=torch.bool)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        packed = torch.ops.fastbert.attention(qkv, b, cu, L, nh, 0.2)
        masked = torch.ops.fastbert.attention_masked(qkv.view(B, L, 3 * H), b, keep, nh, 0.2)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(packed[0], masked[0].reshape(B * L, H))
    assert torch.equal(packed[1], masked[1].reshape(B, nh, L).permute(1, 0, 2).reshape(nh, B * L))
    assert torch.isneginf(packed[1][0, :3]).all() and not packed[0][:3, :d].any()
    assert torch.isfinite(packed[1][0, 3:]).all() and torch.isfinite(packed[1][1:]).all()
    assert packed[0][3:, :d].abs().sum() > 0


@needs_bf16_dot
def test_bf16_dot_same_bits_at_any_thread_count(bf16_dot):
    lengths, nh, d = [70, 0, 9, 300], 1, 32
    cu = cu_of(lengths)
    qkv, b = make_qkv((379, 3 * nh * d), torch.bfloat16, seed=12)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(torch.ops.fastbert.attention(qkv, b, cu, 300, nh, 0.2, 0.2, 9, 1))
    finally:
        torch.set_num_threads(before)
    for out, lse in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(lse, results[0][1])


def test_bf16_dot_switch():
    on = fastbert.ops.cpu_bf16_dot()
    assert on == fastbert.ops.cpu_bf16_dot_supported() or not on
    if not fastbert.ops.cpu_bf16_dot_supported():
        with pytest.raises(ValueError, match="avx512_bf16"):
            fastbert.ops.set_cpu_bf16_dot(True)
        return
    try:
        fastbert.ops.set_cpu_bf16_dot(False)
        assert not fastbert.ops.cpu_bf16_dot()
        fastbert.ops.set_cpu_bf16_dot(True)
        assert fastbert.ops.cpu_bf16_dot()
    finally:
        fastbert.ops.set_cpu_bf16_dot(on)
