"""Shared test helpers: the CPU instruction-set fixture, tolerances per dtype, random inputs."""
import pytest
import torch

from fastbert import ops

requires_extension = pytest.mark.skipif(not ops.HAS_EXTENSION, reason=f"fastbert._C not built: {ops.LOAD_ERROR}")

# (atol, rtol) of a kernel against the reference run on the same (rounded) inputs.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def assert_close(actual, expected, dtype=None, msg=""):
    atol, rtol = TOLERANCES[dtype or actual.dtype]
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{msg}\n{m}")


@pytest.fixture(params=ops.supported_cpu_isas() or ["none"])
def cpu_isa(request):
    """Runs a test once per instruction set this processor supports (avx512, avx2, scalar)."""
    if request.param == "none":
        pytest.skip("fastbert._C not built")
    previous = ops.cpu_isa()
    ops.set_cpu_isa(request.param)
    yield request.param
    ops.set_cpu_isa(previous)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def randn(*shape, dtype=torch.float32, gen=None, scale=1.0):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
