"""int8 inference ops (quantize_rows, dequantize_rows, dequant_bias_act_quant, dequant_bias_residual_layernorm,
attention_quant) against fastbert/ops/reference.py, on every instruction set, dtype and awkward shape,
quantizing symmetric and asymmetric (with a per-row shift) and dequantizing plain and shifted GEMM inputs.

int8 outputs may differ from the reference by 1 where a value lands within an ulp of a .5 tie (the kernels
multiply by 1 / scale and use their own activation polynomials), and such differences must be rare."""

import zlib

import pytest
import torch

from fastbert import ops
from fastbert.ops import reference
from tests.helpers import TOLERANCES, requires_extension

pytestmark = requires_extension

T_SIZES = [1, 3, 37, 200]
K_SIZES = [1, 7, 16, 33, 384, 389, 3072]
DTYPES = [torch.float32, torch.bfloat16]
ACTS = ["gelu", "gelu_new", "relu"]
# The fused activations (csrc/cpu/activation_vec.h) are within 1.5e-6 absolute of torch's (erf GELU: 1.3e-6), which
# is a large relative error in GELU's far negative tail: a row whose max |h| lies there (N = 1) gets a scale off
# by up to 1.5e-6 / 127 absolute.
ACT_SCALE_ATOL = 1.5e-6 / 127


def _deq(q, scale, shift):
    """The values q stands for: q * scale (+ shift when asymmetric)."""
    out = q.float() * scale[:, None]
    return out + shift[:, None] if shift.numel() else out


def assert_act_q_close(q, scale, shift, q_ref, scale_ref, shift_ref):
    """assert_q_close for rows after an activation. The activations' absolute error is a large part of a step in
    a row whose max |h| is small (all of it in GELU's far negative tail, where either GELU may round to 0 and the
    other not, giving one side a zero row of scale 1): rows with max |h| < 1e-2 are checked by their dequantized
    values instead, within one step plus the activations' absolute error."""
    deq, deq_ref = _deq(q, scale, shift), _deq(q_ref, scale_ref, shift_ref)
    amax, amax_ref = deq.abs().amax(dim=1), deq_ref.abs().amax(dim=1)
    small = (amax < 1e-2) | (amax_ref < 1e-2)
    step = torch.maximum(torch.where(amax > 0, scale, 0), torch.where(amax_ref > 0, scale_ref, 0))
    assert ((deq - deq_ref)[small].abs() <= (step[small, None] + 1.5e-6) * (1 + 1e-5)).all()
    big = ~small
    assert_q_close(
        q[big],
        scale[big],
        q_ref[big],
        scale_ref[big],
        2e-6,
        ACT_SCALE_ATOL,
        shift[big] if shift.numel() else shift,
        shift_ref[big] if shift_ref.numel() else shift_ref,
    )


# dequantized float outputs, relative to each row's max |value|
FLOAT_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _gen(*key):
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def _activations(T, K, gen, dtype=torch.float32):
    """Random normal rows with a few outlier channels x100 (as BERT's hidden states have) and, from 3 rows on,
    one row of exact zeros."""
    x = torch.randn(T, K, generator=gen)
    outliers = torch.randperm(K, generator=gen)[: max(1, K // 50)]
    x[:, outliers] *= 100.0
    if T >= 3:
        x[T // 2] = 0.0
    return x.to(dtype)


def _smooth(K, gen):
    return torch.rand(K, generator=gen) * 1.5 + 0.25


def _acc(T, N, gen, lim=2**20):
    """int32 GEMM outputs: random over +-lim, plus int32 extremes in the first row."""
    acc = torch.randint(-lim, lim, (T, N), generator=gen, dtype=torch.int32)
    acc[0, 0] = torch.iinfo(torch.int32).max
    if N > 1:
        acc[0, 1] = torch.iinfo(torch.int32).min
    return acc


def _scales(T, N, gen):
    x_scale = torch.rand(T, generator=gen) * 0.02 + 1e-3
    w_scale = torch.rand(N, generator=gen) * 2e-3 + 1e-4
    return x_scale, w_scale


def _shifts(T, N, gen, on):
    """(x_shift (T,), w_sum (N,)) of a shifted GEMM input, or (None, None)."""
    if not on:
        return None, None
    return torch.randn(T, generator=gen) * 3.0, torch.randn(N, generator=gen) * 0.5


def assert_q_close(q, scale, q_ref, scale_ref, scale_rtol=1e-6, scale_atol=0.0, shift=None, shift_ref=None):
    assert q.dtype == torch.int8 and q.shape == q_ref.shape
    assert scale.dtype == torch.float32 and scale.shape == scale_ref.shape
    assert torch.isfinite(scale).all() and (scale > 0).all()
    torch.testing.assert_close(scale, scale_ref, rtol=scale_rtol, atol=scale_atol)
    if shift is not None:  # the row's centre: within the scale's tolerance of the row's range
        assert shift.dtype == torch.float32 and shift.shape == shift_ref.shape
        torch.testing.assert_close(
            shift,
            shift_ref,
            rtol=scale_rtol,
            atol=scale_atol * 127 + 1e-6 * scale_ref.max() if scale_ref.numel() else 0.0,
        )
    diff = (q.int() - q_ref.int()).abs()
    assert diff.max().item() <= 1 if diff.numel() else True, f"int8 differs by {diff.max().item()}"
    assert (q != -128).all()
    n_off = int((diff > 0).sum())
    assert n_off <= max(2, q.numel() // 1000), f"{n_off} of {q.numel()} int8 values off by 1"


def assert_rows_close(out, ref, dtype):
    """|out - ref| <= tol * the row's max |ref| (+ tol for an all-zero row)."""
    tol = FLOAT_TOL[dtype]
    rowmax = ref.float().abs().amax(dim=-1, keepdim=True) if ref.shape[-1] else ref.float()
    err = (out.float() - ref.float()).abs()
    assert (err <= tol * rowmax + tol * 1e-3).all(), f"max err {(err / (rowmax + 1e-30)).max().item()} relative"


# ---------------------------------------------------------------- quantize_rows


@pytest.mark.parametrize("asym", [False, True], ids=["sym", "asym"])
@pytest.mark.parametrize("smooth", [False, True], ids=["plain", "smooth"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("K", K_SIZES)
@pytest.mark.parametrize("T", T_SIZES)
def test_quantize_rows(cpu_isa, T, K, dtype, smooth, asym):
    gen = _gen("q", T, K)
    x = _activations(T, K, gen, dtype)
    if asym:  # one-sided rows, as a GELU writes: what the shift is for
        x = (x.float().abs() - 0.1).to(dtype)
        if T >= 3:
            x[T // 2] = 0.0
    sm = _smooth(K, gen) if smooth else None
    q, scale, shift = torch.ops.fastbert.quantize_rows(x, sm, asym)
    q_ref, scale_ref, shift_ref = reference.quantize_rows(x, sm, asym)
    assert shift.shape == ((T,) if asym else (0,))
    assert_q_close(q, scale, q_ref, scale_ref, shift=shift, shift_ref=shift_ref)
    if T >= 3:  # the zero row: scale 1, q 0 (shift 0)
        assert scale[T // 2].item() == 1.0 and (q[T // 2] == 0).all()
        assert not asym or shift[T // 2].item() == 0.0
    # q * scale (+ shift) reconstructs x * smooth to within half a step per element
    xs = x.float() * (sm if smooth else 1.0)
    assert ((_deq(q, scale, shift) - xs).abs() <= scale[:, None] * 0.5 * (1 + 1e-5) + 1e-6 * xs.abs()).all()
    if asym and K > 1:  # both ends of each non-constant row's range are reached: all 255 levels in use
        spread = xs.amax(dim=1) > xs.amin(dim=1)
        assert (q.amax(dim=1)[spread] == 127).all() and (q.amin(dim=1)[spread] == -127).all()


def test_quantize_rows_scale_rule(cpu_isa):
    """Zero rows get scale 1 and q 0; rows of denormals a finite 1 / scale (the FLT_MIN floor); a row's max
    |value| maps to +-127; ties round half to even (at a power-of-two scale, where 1 / scale is exact)."""
    tiny = torch.finfo(torch.float32).tiny
    x = torch.zeros(6, 19)
    x[1, 3] = 1e-40  # a denormal row
    x[2, :] = torch.linspace(-5, 5, 19)  # max 5 -> +-127
    x[3, 0] = -3.0  # a single negative value
    x[4, :8] = 2.0 * torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 1.0])  # ties at scale 2
    x[4, 18] = 254.0  # scale 254 / 127 = 2
    x[5, :] = 1e-37  # amax / 127 below FLT_MIN: scale FLT_MIN
    q, scale, _ = torch.ops.fastbert.quantize_rows(x, None)
    assert torch.isfinite(scale).all()
    assert scale[0].item() == 1.0 and (q[0] == 0).all()
    assert scale[1].item() == tiny and (q[1] == 0).all()  # 1e-40 / FLT_MIN rounds to 0: the floor loses it
    assert q[2, 0].item() == -127 and q[2, -1].item() == 127
    assert q[3, 0].item() == -127 and scale[3].item() == pytest.approx(3.0 / 127, rel=1e-7)
    assert scale[4].item() == 2.0
    assert q[4, :8].tolist() == [0, 2, 2, 0, -2, -2, 126, 1] and q[4, 18].item() == 127
    assert scale[5].item() == tiny and (q[5] == round(1e-37 / tiny)).all()
    q_ref, scale_ref, _ = reference.quantize_rows(x)
    assert torch.equal(q, q_ref) and torch.equal(scale, scale_ref)


def test_quantize_rows_asymmetric_rule(cpu_isa):
    """Asymmetric: the shift is the range's centre and the half-range maps to +-127; a constant row gets scale 1,
    q 0 and its value as the shift (exact); a zero row scale 1, q 0, shift 0."""
    x = torch.zeros(4, 19)
    x[1] = torch.linspace(0, 254, 19)  # centre 127, half-range 127: scale 1
    x[2] = 3.5  # constant
    x[3, :8] = torch.tensor([-0.17, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0])
    q, scale, shift = torch.ops.fastbert.quantize_rows(x, None, True)
    assert scale[0].item() == 1.0 and shift[0].item() == 0.0 and (q[0] == 0).all()
    assert scale[1].item() == 1.0 and shift[1].item() == 127.0
    assert q[1, 0].item() == -127 and q[1, -1].item() == 127
    assert scale[2].item() == 1.0 and shift[2].item() == 3.5 and (q[2] == 0).all()
    assert shift[3].item() == pytest.approx((8.0 - 0.17) / 2) and q[3, 0].item() == -127 and q[3, 6].item() == 127
    q_ref, scale_ref, shift_ref = reference.quantize_rows(x, None, True)
    assert torch.equal(scale, scale_ref) and torch.equal(shift, shift_ref)
    assert (q.int() - q_ref.int()).abs().max().item() <= 1


def test_quantize_rows_empty_and_noncontiguous(gen):
    q, scale, shift = torch.ops.fastbert.quantize_rows(torch.empty(0, 8), None)
    assert q.shape == (0, 8) and scale.shape == (0,) and shift.shape == (0,)
    q, scale, shift = torch.ops.fastbert.quantize_rows(torch.empty(3, 0), None, True)
    assert q.shape == (3, 0) and scale.tolist() == [1.0, 1.0, 1.0] and shift.tolist() == [0.0, 0.0, 0.0]
    x = torch.randn(40, 33, generator=gen).t()
    for asym in (False, True):
        q, scale, shift = torch.ops.fastbert.quantize_rows(x, None, asym)
        q_ref, scale_ref, shift_ref = reference.quantize_rows(x, None, asym)
        assert_q_close(q, scale, q_ref, scale_ref, shift=shift, shift_ref=shift_ref)


# ---------------------------------------------------------------- dequantize_rows


@pytest.mark.parametrize("shifted", [False, True], ids=["plain", "shifted"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N", K_SIZES)
@pytest.mark.parametrize("T", T_SIZES)
def test_dequantize_rows(cpu_isa, T, N, dtype, shifted):
    gen = _gen("dq", T, N)
    acc = _acc(T, N, gen)
    x_scale, w_scale = _scales(T, N, gen)
    x_shift, w_sum = _shifts(T, N, gen, shifted)
    out = torch.ops.fastbert.dequantize_rows(acc, x_scale, w_scale, dtype, x_shift, w_sum)
    assert out.dtype == dtype and out.shape == (T, N)
    ref = reference.dequantize_rows(acc, x_scale, w_scale, dtype, x_shift, w_sum)
    assert torch.isfinite(out.float()).all()
    assert_rows_close(out, ref, dtype)
    if dtype == torch.float32 and not shifted:  # the same three fp32 roundings in the same order: exact
        # (the shift's multiply-add may be fused into one rounding by the compiler: within assert_rows_close)
        assert torch.equal(out, ref)


def test_int_mm_end_to_end(cpu_isa, gen):
    """quantize_rows -> torch._int_mm -> dequantize_rows approximates x @ w.T (per-channel weight scales):
    plain random rows, and rows with outlier channels through SmoothQuant (x * s into the int8 GEMM, 1 / s folded
    into the weight's columns), symmetric and shifted; one-sided rows (a GELU's output) closer shifted."""
    T, K, N = 37, 384, 389
    w = torch.randn(N, K, generator=gen) * 0.05
    plain = torch.randn(T, K, generator=gen)
    outliers = torch.randn(T, K, generator=gen)  # no zero row: cosine per row below
    outliers[:, torch.randperm(K, generator=gen)[:8]] *= 100.0
    gelu = torch.nn.functional.gelu(torch.randn(T, K, generator=gen) * 2)
    errors = {}
    for name, x, smooth in (
        ("plain", plain, None),
        ("gelu", gelu, None),
        ("outliers", outliers, outliers.abs().amax(dim=0).clamp(min=1e-5).rsqrt()),
    ):
        w_s = w / smooth if smooth is not None else w
        w_scale = w_s.abs().amax(dim=1) / 127
        w_q = torch.round(w_s / w_scale[:, None]).clamp(-127, 127).to(torch.int8)
        w_sum = w_q.sum(dim=1, dtype=torch.int64).double().mul(w_scale.double()).float()
        for asym in (False, True):
            x_q, x_scale, x_shift = torch.ops.fastbert.quantize_rows(x, smooth, asym)
            acc = torch._int_mm(x_q, w_q.t().contiguous())
            out = torch.ops.fastbert.dequantize_rows(
                acc, x_scale, w_scale, torch.float32, x_shift if asym else None, w_sum if asym else None
            )
            cos = torch.nn.functional.cosine_similarity(out, x @ w.t(), dim=1)
            assert cos.min().item() > 0.999, (name, asym, cos.min().item())
            errors[name, asym] = float((out - x @ w.t()).norm())
    assert errors["gelu", True] < 0.75 * errors["gelu", False], errors


# ---------------------------------------------------------------- dequant_bias_act_quant


@pytest.mark.parametrize("asym", [False, True], ids=["sym", "shifted-asym"])
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("smooth", [False, True], ids=["plain", "smooth"])
@pytest.mark.parametrize("bias_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N", K_SIZES)
@pytest.mark.parametrize("T", T_SIZES)
def test_dequant_bias_act_quant(cpu_isa, T, N, bias_dtype, smooth, activation, asym):
    gen = _gen("dbaq", T, N)
    acc = _acc(T, N, gen)
    x_scale, w_scale = _scales(T, N, gen)
    bias = torch.randn(N, generator=gen).to(bias_dtype)
    if T == 3:  # a zero row of acc with a zero bias: a row of exact zeros after the activation
        acc[1] = 0
        bias.zero_()
    sm = _smooth(N, gen) if smooth else None
    x_shift, w_sum = _shifts(T, N, gen, asym)  # asym: a shifted input, an asymmetric output
    if T == 3 and asym:
        x_shift[1] = 0.0
    args = (acc, x_scale, w_scale, bias, activation, sm, x_shift, w_sum, asym)
    q, scale, shift = torch.ops.fastbert.dequant_bias_act_quant(*args)
    assert shift.shape == ((T,) if asym else (0,))
    assert_act_q_close(q, scale, shift, *reference.dequant_bias_act_quant(*args))
    if T == 3:
        assert scale[1].item() == 1.0 and (q[1] == 0).all()


def test_dequant_bias_act_quant_every_activation(cpu_isa, gen):
    acc, (x_scale, w_scale) = _acc(5, 389, gen), _scales(5, 389, gen)
    bias = torch.randn(389, generator=gen)
    for act in reference.ACTIVATIONS:
        q, scale, shift = torch.ops.fastbert.dequant_bias_act_quant(acc, x_scale, w_scale, bias, act, None)
        assert_act_q_close(q, scale, shift, *reference.dequant_bias_act_quant(acc, x_scale, w_scale, bias, act))


# ---------------------------------------------------------------- dequant_bias_residual_layernorm


@pytest.mark.parametrize(
    "quantize,smooth,asym",
    [(False, False, False), (True, False, False), (True, True, False), (False, False, True), (True, True, True)],
    ids=["float", "quant", "quant-smooth", "float-shifted", "quant-smooth-asym"],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N", K_SIZES)
@pytest.mark.parametrize("T", T_SIZES)
def test_dequant_bias_residual_layernorm(cpu_isa, T, N, dtype, quantize, smooth, asym):
    gen = _gen("dbrl", T, N)
    acc = _acc(T, N, gen)
    x_scale, w_scale = _scales(T, N, gen)
    residual = _activations(T, N, gen, dtype)
    bias = torch.randn(N, generator=gen).to(dtype) if N % 2 else None
    weight = (torch.rand(N, generator=gen) + 0.5).to(dtype)
    beta = torch.randn(N, generator=gen).to(dtype)
    sm = _smooth(N, gen) if smooth else None
    x_shift, w_sum = _shifts(T, N, gen, asym)  # asym: a shifted input, an asymmetric output when quantizing
    args = (acc, x_scale, w_scale, bias, residual, weight, beta, 1e-12, quantize, sm, x_shift, w_sum, asym)
    out, q, scale, shift = torch.ops.fastbert.dequant_bias_residual_layernorm(*args)
    out_ref, q_ref, scale_ref, shift_ref = reference.dequant_bias_residual_layernorm(*args)
    assert out.dtype == dtype and out.shape == (T, N)
    assert torch.isfinite(out.float()).all()
    assert_rows_close(out, out_ref, dtype)
    if not quantize:
        assert q.shape == (0,) and q.dtype == torch.int8 and scale.shape == (0,) and scale.dtype == torch.float32
        assert shift.shape == (0,)
        return
    # q quantizes exactly the out returned (bf16-rounded for bf16): compare with quantize_rows of the kernel's out
    q_own, scale_own, shift_own = reference.quantize_rows(out, sm, asym)
    assert_q_close(q, scale, q_own, scale_own, shift=shift, shift_ref=shift_own)
    # and, through out's tolerance, with the reference's quantization (scales agree to out's precision)
    torch.testing.assert_close(scale, scale_ref, rtol=FLOAT_TOL[dtype] * 2, atol=0)


def test_dequant_bias_residual_layernorm_stable_and_constant_rows(cpu_isa, gen):
    """A common offset 1e3 x the spread (where E[s^2] - E[s]^2 in fp32 loses everything) keeps the fp32 input's
    precision; a constant row normalises to beta."""
    T, N = 4, 768
    acc = torch.randint(-1000, 1000, (T, N), generator=gen, dtype=torch.int32)
    x_scale, w_scale = torch.full((T,), 1e-2), torch.full((N,), 1e-2)
    residual = torch.full((T, N), 100.0)
    residual[3] = 7.0
    acc[3] = 0
    weight, beta = torch.ones(N), torch.randn(N, generator=gen)
    out, q, scale, _ = torch.ops.fastbert.dequant_bias_residual_layernorm(
        acc, x_scale, w_scale, None, residual, weight, beta, 1e-12, True, None
    )
    s64 = acc.double() * x_scale.double()[:, None] * w_scale.double() + residual.double()  # float64
    ref = torch.nn.functional.layer_norm(s64, (N,), weight.double(), beta.double(), 1e-12)
    torch.testing.assert_close(out[:3].double(), ref[:3], atol=2e-3, rtol=0)
    torch.testing.assert_close(out[3], beta, atol=0, rtol=0)
    assert torch.isfinite(scale).all()


# ---------------------------------------------------------------- attention_quant


def _packed_qkv(lengths, nh, d, dtype, gen):
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    T, H = int(cu[-1]), nh * d
    qkv = torch.randn(T, 3 * H, generator=gen).to(dtype)
    bias = (torch.randn(3 * H, generator=gen) * 0.5).to(dtype)
    return qkv, bias, cu, max(lengths)


ATTN_CASES = [
    ([1], 1, 16),  # one token
    ([5, 37, 0, 130], 3, 20),  # ragged, an empty sequence, a head size off the vector width
    ([300], 2, 64),  # one sequence longer than a task's rows: split into row chunks
    ([7, 64, 129, 3, 50], 12, 32),  # MiniLM's heads
    ([7, 144, 1, 0, 60, 33, 90, 12, 5, 140, 77], 6, 24),  # many short sequences: one task quantizes each
    ([17, 200], 2, 128),
    ([9, 2], 1, 33),
]


@pytest.mark.parametrize("asym", [False, True], ids=["sym", "asym"])
@pytest.mark.parametrize("smooth", [False, True], ids=["plain", "smooth"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lengths,nh,d", ATTN_CASES, ids=[f"{len(c[0])}seq-{c[1]}x{c[2]}" for c in ATTN_CASES])
def test_attention_quant(cpu_isa, lengths, nh, d, dtype, smooth, asym):
    gen = _gen("attnq", tuple(lengths), nh, d)
    qkv, bias, cu, mx = _packed_qkv(lengths, nh, d, dtype, gen)
    sm = _smooth(nh * d, gen) if smooth else None
    scale = d**-0.5
    q, row_scale, shift = torch.ops.fastbert.attention_quant(qkv, bias, cu, mx, nh, scale, sm, asym)
    # exactly what quantizing the attention kernel's own output gives (the fused op never writes that output)
    out, _ = torch.ops.fastbert.attention(qkv, bias, cu, mx, nh, scale)
    q_own, scale_own, shift_own = torch.ops.fastbert.quantize_rows(out, sm, asym)
    assert torch.equal(q, q_own) and torch.equal(row_scale, scale_own) and torch.equal(shift, shift_own)
    # and the values it stands for are the reference attention's, within half a step plus attention's tolerance
    # (tests/ops/test_attention.py's, scaled by smooth)
    out_ref, _ = reference.attention(qkv.double(), bias.double(), cu, mx, nh, scale)
    factor = sm if smooth else torch.ones(nh * d)
    v_ref = out_ref.float() * factor
    deq = _deq(q, row_scale, shift)
    atol, rtol = TOLERANCES[dtype]
    tol = row_scale[:, None] * 0.5 * (1 + 1e-5) + (atol + rtol * out_ref.float().abs()) * factor
    assert ((deq - v_ref).abs() <= tol).all(), f"max err {((deq - v_ref).abs() - tol).max().item()} over tolerance"
    assert (q != -128).all() and q.shape == (qkv.shape[0], nh * d)
    assert shift.shape == ((qkv.shape[0],) if asym else (0,))


def test_attention_quant_threads(gen):
    """The same codes on one thread and on two: 6 sequences are 6 tasks of every head on one thread, and 24
    tasks of one head, quantized after the attention, on two."""
    qkv, bias, cu, mx = _packed_qkv([100, 3, 77, 5, 9, 120], 4, 32, torch.bfloat16, gen)
    args = (qkv, bias, cu, mx, 4, 32**-0.5, _smooth(128, gen), True)
    two = torch.ops.fastbert.attention_quant(*args)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.fastbert.attention_quant(*args)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- opcheck and argument errors


def _opcheck_cases(gen):
    T, K, N = 5, 33, 17
    x = torch.randn(T, K, generator=gen)
    acc = _acc(T, N, gen, lim=1000)
    x_scale, w_scale = _scales(T, N, gen)
    res = torch.randn(T, N, generator=gen)
    w, b = torch.rand(N, generator=gen) + 0.5, torch.randn(N, generator=gen)
    sm = _smooth(N, gen)
    x_shift, w_sum = _shifts(T, N, gen, True)
    return [
        (torch.ops.fastbert.quantize_rows.default, (x, None)),
        (torch.ops.fastbert.quantize_rows.default, (x, None, True)),
        (torch.ops.fastbert.dequantize_rows.default, (acc, x_scale, w_scale, torch.float32, x_shift, w_sum)),
        (
            torch.ops.fastbert.dequant_bias_act_quant.default,
            (acc, x_scale, w_scale, b, "gelu", sm, x_shift, w_sum, True),
        ),
        (
            torch.ops.fastbert.dequant_bias_residual_layernorm.default,
            (acc, x_scale, w_scale, b, res, w, b, 1e-12, True, sm, x_shift, w_sum, True),
        ),
        (torch.ops.fastbert.quantize_rows.default, (x.bfloat16(), _smooth(K, gen))),
        (torch.ops.fastbert.attention_quant.default, (*_packed_qkv([3, 4], 2, 16, torch.float32, gen), 2, 0.25, None)),
        (
            torch.ops.fastbert.attention_quant.default,
            (*_packed_qkv([5], 2, 16, torch.bfloat16, gen), 2, 0.25, _smooth(32, gen), True),
        ),
        (torch.ops.fastbert.dequantize_rows.default, (acc, x_scale, w_scale, torch.float32)),
        (torch.ops.fastbert.dequantize_rows.default, (acc, x_scale, w_scale, torch.bfloat16)),
        (torch.ops.fastbert.dequant_bias_act_quant.default, (acc, x_scale, w_scale, b, "gelu", sm)),
        (torch.ops.fastbert.dequant_bias_act_quant.default, (acc, x_scale, w_scale, b.bfloat16(), "relu", None)),
        (
            torch.ops.fastbert.dequant_bias_residual_layernorm.default,
            (acc, x_scale, w_scale, b, res, w, b, 1e-12, True, sm),
        ),
        (
            torch.ops.fastbert.dequant_bias_residual_layernorm.default,
            (acc, x_scale, w_scale, None, res.bfloat16(), w.bfloat16(), b.bfloat16(), 1e-5, False, None),
        ),
    ]


def test_opcheck(cpu_isa, gen):
    for op, args in _opcheck_cases(gen):
        torch.library.opcheck(op, args)


def test_python_wrappers_match_ops(gen):
    """fastbert.ops' wrappers reach the kernels, and the reference path (requires_grad) agrees."""
    for op, args in _opcheck_cases(gen):
        name = op.name().split("::")[1]
        got = getattr(ops, name)(*args)
        ref = getattr(reference, name)(*args)
        for g, r in zip(got if isinstance(got, tuple) else (got,), ref if isinstance(ref, tuple) else (ref,)):
            assert g.dtype == r.dtype and g.shape == r.shape
    assert set(ops.CPU_ONLY_OPS) <= set(ops.OPS)


def test_bad_arguments():
    x = torch.randn(4, 8)
    acc = torch.zeros(4, 8, dtype=torch.int32)
    xs, ws, b = torch.ones(4), torch.ones(8), torch.zeros(8)
    res, w = torch.zeros(4, 8), torch.ones(8)
    fb = torch.ops.fastbert
    with pytest.raises(RuntimeError, match=r"quantize_rows: x must be a float32 or bfloat16 .* \(T, K\)"):
        fb.quantize_rows(x.double(), None)
    with pytest.raises(RuntimeError, match=r"quantize_rows: x must be .* \(T, K\)"):
        fb.quantize_rows(torch.randn(2, 4, 8), None)
    with pytest.raises(RuntimeError, match=r"quantize_rows: smooth must be a float32 .* \(K,\) = \(8,\)"):
        fb.quantize_rows(x, torch.ones(7))
    with pytest.raises(RuntimeError, match=r"quantize_rows: smooth must be a float32"):
        fb.quantize_rows(x, torch.ones(8, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match=r"dequantize_rows: acc must be an int32 .* \(T, N\)"):
        fb.dequantize_rows(acc.float(), xs, ws, torch.float32)
    with pytest.raises(RuntimeError, match=r"dequantize_rows: x_scale must be a float32 .* \(T,\) = \(4,\)"):
        fb.dequantize_rows(acc, torch.ones(5), ws, torch.float32)
    with pytest.raises(RuntimeError, match=r"dequantize_rows: w_scale must be a float32 .* \(N,\) = \(8,\)"):
        fb.dequantize_rows(acc, xs, torch.ones(8, dtype=torch.float64), torch.float32)
    with pytest.raises(ValueError, match="dequantize_rows: dtype must be float32 or bfloat16"):
        fb.dequantize_rows(acc, xs, ws, torch.float16)
    with pytest.raises(ValueError, match="dequantize_rows: x_shift and w_sum go together .* x_shift without w_sum"):
        fb.dequantize_rows(acc, xs, ws, torch.float32, xs, None)
    with pytest.raises(RuntimeError, match=r"dequantize_rows: w_sum must be a float32 .* \(N,\) = \(8,\)"):
        fb.dequantize_rows(acc, xs, ws, torch.float32, xs, torch.ones(7))
    with pytest.raises(ValueError, match="dequant_bias_act_quant: x_shift and w_sum go together .* w_sum without"):
        fb.dequant_bias_act_quant(acc, xs, ws, b, "gelu", None, None, ws)
    with pytest.raises(ValueError, match="dequant_bias_act_quant: unknown activation 'tanhh'"):
        fb.dequant_bias_act_quant(acc, xs, ws, b, "tanhh", None)
    with pytest.raises(RuntimeError, match=r"dequant_bias_act_quant: acc must be an int32"):
        fb.dequant_bias_act_quant(acc.to(torch.int8), xs, ws, b, "gelu", None)
    with pytest.raises(RuntimeError, match=r"dequant_bias_act_quant: bias must be .* \(N,\) = \(8,\)"):
        fb.dequant_bias_act_quant(acc, xs, ws, torch.zeros(9), "gelu", None)
    with pytest.raises(RuntimeError, match=r"dequant_bias_act_quant: x_scale must be .* \(T,\) = \(4,\)"):
        fb.dequant_bias_act_quant(acc, torch.ones(4, 1), ws, b, "gelu", None)
    with pytest.raises(RuntimeError, match=r"dequant_bias_act_quant: smooth must be .* \(N,\) = \(8,\)"):
        fb.dequant_bias_act_quant(acc, xs, ws, b, "gelu", torch.ones(3))
    dbrl = fb.dequant_bias_residual_layernorm
    with pytest.raises(RuntimeError, match=r"dequant_bias_residual_layernorm: acc must be an int32"):
        dbrl(acc.float(), xs, ws, None, res, w, b, 1e-12, True, None)
    with pytest.raises(RuntimeError, match=r"dequant_bias_residual_layernorm: residual must be .* \(T, N\)"):
        dbrl(acc, xs, ws, None, torch.zeros(4, 9), w, b, 1e-12, True, None)
    with pytest.raises(RuntimeError, match=r"dequant_bias_residual_layernorm: residual must be a float32 or bf"):
        dbrl(acc, xs, ws, None, res.half(), w.half(), b.half(), 1e-12, True, None)
    with pytest.raises(RuntimeError, match=r"dequant_bias_residual_layernorm: weight must be .* residual's dtype"):
        dbrl(acc, xs, ws, None, res, w.bfloat16(), b, 1e-12, True, None)
    with pytest.raises(RuntimeError, match=r"dequant_bias_residual_layernorm: beta must be .* \(N,\) = \(8,\)"):
        dbrl(acc, xs, ws, None, res, w, torch.zeros(7), 1e-12, True, None)
    with pytest.raises(RuntimeError, match=r"dequant_bias_residual_layernorm: bias must be"):
        dbrl(acc, xs, ws, torch.zeros(3), res, w, b, 1e-12, True, None)
    with pytest.raises(RuntimeError, match=r"dequant_bias_residual_layernorm: w_scale must be .* \(N,\) = \(8,\)"):
        dbrl(acc, xs, torch.ones(4), None, res, w, b, 1e-12, True, None)
    with pytest.raises(RuntimeError, match=r"dequant_bias_residual_layernorm: acc must have a non-empty last"):
        dbrl(
            torch.zeros(4, 0, dtype=torch.int32),
            xs,
            torch.ones(0),
            None,
            torch.zeros(4, 0),
            torch.ones(0),
            torch.ones(0),
            1e-12,
            True,
            None,
        )
    with pytest.raises(ValueError, match="dequant_bias_residual_layernorm: eps must be >= 0"):
        dbrl(acc, xs, ws, None, res, w, b, -1.0, True, None)


def test_attention_quant_bad_arguments(gen):
    qkv, bias, cu, mx = _packed_qkv([3, 4], 2, 16, torch.float32, gen)
    fb = torch.ops.fastbert
    with pytest.raises(RuntimeError, match="attention_quant: qkv must be float32 or bfloat16, got Double"):
        fb.attention_quant(qkv.double(), bias.double(), cu, mx, 2, 0.25, None)
    with pytest.raises(RuntimeError, match=r"attention_quant: qkv must have shape \(T, 3 \* hidden\)"):
        fb.attention_quant(qkv[None], bias, cu, mx, 2, 0.25, None)
    with pytest.raises(RuntimeError, match=r"attention_quant: smooth must be a float32 .* \(hidden,\) = \(32,\)"):
        fb.attention_quant(qkv, bias, cu, mx, 2, 0.25, torch.ones(31))
    with pytest.raises(ValueError, match=r"attention_quant: cu_seqlens\[-1\] = 7 must equal qkv.size\(0\) = T = 6"):
        fb.attention_quant(qkv[:6], bias, cu, mx, 2, 0.25, None)
    with pytest.raises(ValueError, match="attention_quant: num_heads must be > 0"):
        fb.attention_quant(qkv, bias, cu, mx, 0, 0.25, None)
