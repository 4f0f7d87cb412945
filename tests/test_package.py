"""The package around the kernels: loading, the reference fallback, the CPU instruction-set switch."""

import pytest
import torch

from fastbert import ops
from fastbert.ops import reference
from tests.helpers import requires_extension, run_python


@requires_extension
def test_every_op_has_cpu_kernel_fake_and_reference():
    for name in ops.OPS:
        assert ops.has_kernel(name, "cpu"), name
        assert hasattr(reference, name), name
        op = getattr(torch.ops.fastbert, name).default
        assert torch._library.simple_registry.singleton.find(op.name()).fake_impl.kernel is not None, name


def test_import_without_extension_falls_back_to_reference():
    code = (
        "import sys, warnings; sys.modules['fastbert._C'] = None\n"
        "import torch, fastbert\n"
        "assert not fastbert.ops.HAS_EXTENSION\n"
        "x, b = torch.randn(3, 5), torch.randn(5)\n"
        "assert torch.equal(fastbert.ops.bias_act(x, b, 'gelu'), fastbert.reference.bias_act(x, b, 'gelu'))\n"
        "print('ok')"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    assert "compiled kernels unavailable" in result.stderr and "pip install --no-build-isolation" in result.stderr


@requires_extension
@pytest.mark.parametrize("isa", ops.supported_cpu_isas())
def test_env_var_selects_isa(isa):
    result = run_python("import fastbert; print(fastbert.ops.cpu_isa())", FASTBERT_CPU_ISA=isa)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == isa


@requires_extension
def test_bad_isa_env_var_is_a_clear_error():
    result = run_python("import fastbert", FASTBERT_CPU_ISA="sse9")
    assert result.returncode != 0
    assert "FASTBERT_CPU_ISA='sse9'" in result.stderr and "expected avx512, avx2 or scalar" in result.stderr


@requires_extension
def test_set_cpu_isa_rejects_unknown():
    with pytest.raises(ValueError, match="unknown CPU instruction set"):
        ops.set_cpu_isa("neon")


@requires_extension
def test_default_isa_is_the_best_supported():
    result = run_python("import fastbert; print(fastbert.ops.cpu_isa())", FASTBERT_CPU_ISA="")
    assert result.stdout.strip() == ops.supported_cpu_isas()[0]
