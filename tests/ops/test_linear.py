"""fastbert.ops.linear: x @ W^T with gradients through oneDNN on CPU float32, against F.linear (the reference) on
awkward shapes; F.linear itself where oneDNN is not the choice (torch.mm chosen, autocast, other dtypes)."""

import pytest
import torch
import torch.nn.functional as F

from fastbert.ops import gemm
from fastbert.ops.linear import linear
from tests.helpers import max_diff

pytestmark = pytest.mark.skipif(not gemm.HAS_ONEDNN, reason="this PyTorch has no oneDNN linear")


def _ops(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events()]


@pytest.mark.parametrize("shape, out", [((1, 7), 5), ((13, 33), 17), ((3, 11, 40), 24), ((2, 1, 16), 1)])
@pytest.mark.parametrize("grads", ["both", "input", "weight"])
def test_values_and_gradients_match_f_linear(shape, out, grads):
    g = torch.Generator().manual_seed(sum(shape) + out)
    x0 = torch.randn(*shape, generator=g)
    w0 = torch.randn(out, shape[-1], generator=g)
    dy = torch.randn(*shape[:-1], out, generator=g)
    results = []
    for fn in (linear, F.linear):
        x = x0.clone().requires_grad_(grads in ("both", "input"))
        w = w0.clone().requires_grad_(grads in ("both", "weight"))
        y = fn(x, w)
        y.backward(dy)
        results.append((y, x.grad, w.grad))
    (y, dx, dw), (y_ref, dx_ref, dw_ref) = results
    assert y.shape == y_ref.shape and max_diff(y, y_ref) <= 1e-5 * max(1.0, float(y_ref.abs().max()))
    for a, b in ((dx, dx_ref), (dw, dw_ref)):
        assert (a is None) == (b is None)
        if b is not None:
            assert max_diff(a, b) <= 1e-5 * max(1.0, float(b.abs().max()))


def test_the_three_products_go_to_onednn():
    x = torch.randn(9, 12, requires_grad=True)
    w = torch.randn(6, 12, requires_grad=True)
    names = _ops(lambda: linear(x, w).sum().backward())
    assert names.count("mkldnn::_linear_pointwise") == 3 and "aten::mm" not in names


@pytest.mark.parametrize("case", ["mm chosen", "autocast", "float64"])
def test_f_linear_where_onednn_is_not_the_choice(monkeypatch, case):
    dtype = torch.float64 if case == "float64" else torch.float32
    x = torch.randn(5, 8, dtype=dtype, requires_grad=True)
    w = torch.randn(3, 8, dtype=dtype, requires_grad=True)
    if case == "mm chosen":
        monkeypatch.setattr(gemm, "_choice", "mm")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        names = _ops(lambda: linear(x, w))
        y = linear(x, w)
    assert "mkldnn::_linear_pointwise" not in names
    assert y.dtype == (torch.bfloat16 if case == "autocast" else dtype)


def test_double_backward_matches_f_linear():
    """A gradient penalty (create_graph=True) differentiates the backward's products: the same second-order
    gradient as F.linear's, not zero."""
    g = torch.Generator().manual_seed(7)
    x0, w0 = torch.randn(6, 10, generator=g), torch.randn(4, 10, generator=g)
    results = []
    for fn in (linear, F.linear):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        (dx,) = torch.autograd.grad(fn(x, w).tanh().sum(), x, create_graph=True)
        dx.pow(2).sum().backward()
        results.append(w.grad)
    assert float(results[1].abs().max()) > 0.1
    assert max_diff(results[0], results[1]) <= 1e-5 * float(results[1].abs().max())
