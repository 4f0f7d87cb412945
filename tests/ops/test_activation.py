"""bias_act kernel against fastbert/ops/reference.py, every activation, dtype and instruction set."""

import pytest
import torch

from fastbert import ops
from fastbert.ops import reference
from tests.helpers import assert_close, randn, requires_extension

pytestmark = requires_extension


@pytest.mark.parametrize("activation", sorted(reference.ACTIVATIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (37, 389), (2, 5, 3072)])
def test_bias_act(cpu_isa, gen, activation, dtype, shape):
    x = randn(*shape, dtype=dtype, gen=gen, scale=3.0)
    bias = randn(shape[-1], dtype=dtype, gen=gen)
    out = torch.ops.fastbert.bias_act(x, bias, activation)
    assert out.shape == x.shape and out.dtype == dtype
    assert_close(out, reference.bias_act(x, bias, activation), msg=activation)


def test_reference_matches_transformers_activations(gen):
    """Our reference computes each activation as transformers' ACT2FN does."""
    from transformers.activations import ACT2FN

    x = randn(1000, gen=gen, scale=4.0)
    zero = torch.zeros(1000)
    for name in reference.ACTIVATIONS:
        torch.testing.assert_close(reference.bias_act(x, zero, name), ACT2FN[name](x), atol=1e-6, rtol=1e-6, msg=name)


def test_bias_act_noncontiguous(gen):
    x = randn(64, 33, gen=gen).t()
    bias = randn(64, gen=gen)
    assert_close(torch.ops.fastbert.bias_act(x, bias, "gelu"), reference.bias_act(x, bias, "gelu"))


def test_bias_act_empty():
    assert torch.ops.fastbert.bias_act(torch.empty(0, 8), torch.zeros(8), "gelu").shape == (0, 8)


def test_bias_act_bad_args():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="unknown activation 'tanhh'"):
        torch.ops.fastbert.bias_act(x, torch.randn(8), "tanhh")
    with pytest.raises(RuntimeError, match=r"bias must have shape \(8,\)"):
        torch.ops.fastbert.bias_act(x, torch.randn(7), "gelu")
    with pytest.raises(RuntimeError, match="bias dtype"):
        torch.ops.fastbert.bias_act(x, torch.randn(8, dtype=torch.float64), "gelu")


def test_unknown_activation_takes_reference_path(gen):
    """An activation the kernels do not fuse is still answered (by the reference) through fastbert.ops."""
    x, b = randn(3, 5, gen=gen), randn(5, gen=gen)
    with pytest.raises(ValueError, match="unknown activation"):
        ops.bias_act(x, b, "mish")


def test_opcheck(cpu_isa, gen):
    for act in ("gelu", "relu"):
        torch.library.opcheck(torch.ops.fastbert.bias_act.default, (randn(5, 33, gen=gen), randn(33, gen=gen), act))


def test_gelu_float32_accuracy_on_a_dense_grid(cpu_isa):
    """float32 GELU (csrc/cpu/erf.h's rational erf) against float64 erf on 2M points over [-8, 8], the clamp
    boundary (|x / sqrt 2| = 4) and special values: max abs error under 1.5e-6 (measured 1.3e-6; PyTorch's float32
    F.gelu: 1.2e-6 on the same grid)."""
    x = torch.cat([torch.linspace(-8, 8, 2_000_001), torch.linspace(5.6, 5.7, 1001), -torch.linspace(5.6, 5.7, 1001)])
    out = torch.ops.fastbert.bias_act(x.view(1, -1), torch.zeros(x.numel()), "gelu").view(-1)
    x64 = x.double()
    exact = 0.5 * x64 * (1 + torch.erf(x64 / 2**0.5))
    assert (out.double() - exact).abs().max().item() < 1.5e-6
    special = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -0.0, 1e-30, -1e-30, 3e38, -3e38])
    got = torch.ops.fastbert.bias_act(special.view(1, -1), torch.zeros(special.numel()), "gelu").view(-1)
    s64 = special.double()
    exact = (0.5 * s64 * (1 + torch.erf(s64 / 2**0.5))).float()  # inf -> inf, -inf and nan -> nan, 3e38 -> 3e38
    torch.testing.assert_close(got, exact, equal_nan=True, atol=0, rtol=1e-6)
