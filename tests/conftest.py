"""Fixtures: the CPU instruction-set switch and a seeded generator. Helpers a test imports are in tests/helpers.py."""

import pytest
import torch

from fastbert import ops


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
