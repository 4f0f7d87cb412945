// bias_residual_layernorm: out = LayerNorm(x + bias + residual), with the fp32 row statistics (mean, rstd).
//
// Fuses the epilogue of the attention-output and FFN-output GEMMs: the unfused version reads and writes the
// (T, H) activation three times (bias add, residual add, LayerNorm); here each row is read once from x and
// residual into a per-thread fp32 scratch row (H <= a few thousand floats, stays in L1/L2), normalised there
// (csrc/cpu/layernorm.h) and written once. Parallel over rows.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "cpu/isa.h"
#include "cpu/layernorm.h"

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

void bias_residual_layernorm_kernel(const at::Tensor& x, const at::Tensor* bias, const at::Tensor& residual,
                                    const at::Tensor& weight, const at::Tensor& beta, double eps, at::Tensor& out,
                                    at::Tensor& mean, at::Tensor& rstd) {
  const int64_t H = x.size(-1);
  const int64_t N = x.numel() / H;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bias_residual_layernorm", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* rp = residual.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias ? bias->const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    const scalar_t* betap = beta.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    A* meanp = mean.mutable_data_ptr<A>();
    A* rstdp = rstd.mutable_data_ptr<A>();
    const int64_t grain = std::max<int64_t>(1, 16384 / H);
    at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
      auto fill = [=](int64_t r) { return sum_row(xp + r * H, rp + r * H, bp); };  // x + residual (+ bias)
      layernorm_rows<scalar_t>(begin, end, H, fill, wp, betap, eps, op, meanp, rstdp);
    });
  });
}

}  // namespace CPU_CAPABILITY

#ifdef CPU_CAPABILITY_DEFAULT
FASTBERT_CPU_DECLARE(void bias_residual_layernorm_kernel(const at::Tensor&, const at::Tensor*, const at::Tensor&,
                                                         const at::Tensor&, const at::Tensor&, double, at::Tensor&,
                                                         at::Tensor&, at::Tensor&))

static void check_vector(const at::Tensor& t, const char* name, int64_t H, const at::Tensor& x) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == H, "bias_residual_layernorm: ", name, " must have shape (", H,
              ",) to match x's last dimension, got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "bias_residual_layernorm: ", name, " dtype ", t.scalar_type(),
              " must match x dtype ", x.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), "bias_residual_layernorm: ", name, " must be a CPU tensor");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bias_residual_layernorm_cpu(const at::Tensor& x,
                                                                           const std::optional<at::Tensor>& bias,
                                                                           const at::Tensor& residual,
                                                                           const at::Tensor& ln_weight,
                                                                           const at::Tensor& ln_bias, double eps) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) > 0, "bias_residual_layernorm: x must have a non-empty last dimension, got ",
              x.sizes());
  TORCH_CHECK(x.device().is_cpu(), "bias_residual_layernorm: x must be a CPU tensor");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "bias_residual_layernorm: x must be floating point, got ",
              x.scalar_type());
  TORCH_CHECK(residual.sizes() == x.sizes(), "bias_residual_layernorm: residual must have x's shape ", x.sizes(),
              ", got ", residual.sizes());
  TORCH_CHECK(residual.scalar_type() == x.scalar_type() && residual.device().is_cpu(),
              "bias_residual_layernorm: residual must be a CPU tensor of x's dtype ", x.scalar_type());
  TORCH_CHECK_VALUE(eps >= 0, "bias_residual_layernorm: eps must be >= 0, got ", eps);
  const int64_t H = x.size(-1);
  if (bias) check_vector(*bias, "bias", H, x);
  check_vector(ln_weight, "ln_weight", H, x);
  check_vector(ln_bias, "ln_bias", H, x);
  auto xc = x.contiguous();
  auto rc = residual.contiguous();
  auto stat_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto out = at::empty_like(xc);
  auto mean = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(stat_dtype));
  auto rstd = at::empty_like(mean);
  if (xc.numel() > 0) {
    at::Tensor bc = bias ? bias->contiguous() : at::Tensor();
    FASTBERT_CPU_DISPATCH(bias_residual_layernorm_kernel, xc, bias ? &bc : nullptr, rc, ln_weight.contiguous(),
                          ln_bias.contiguous(), eps, out, mean, rstd);
  }
  return {out, mean, rstd};
}

TORCH_LIBRARY_IMPL(fastbert, CPU, m) { m.impl("bias_residual_layernorm", &bias_residual_layernorm_cpu); }
#endif

}  // namespace fastbert::cpu
