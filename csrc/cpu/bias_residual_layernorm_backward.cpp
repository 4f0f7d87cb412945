// bias_residual_layernorm_backward: the gradients of out = LayerNorm(x + bias + residual).
//
// Recomputes s = x + bias + residual row by row from the saved inputs (never saved: one (T, H) tensor less
// kept alive per LayerNorm between forward and backward) and reuses the forward's fp32 (mean, rstd). Per row:
// one read of grad_out, x, residual, one write of grad_s (csrc/cpu/layernorm_backward.h), all in the
// accumulation type. grad_s is the gradient of x and of residual; the bias's is its row sum (fastbert/
// autograd.py). grad_ln_weight and grad_ln_bias are row sums reduced deterministically: fixed row chunks,
// partial sums per chunk, then the partials in chunk order. Parallel over chunks of rows.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "cpu/isa.h"
#include "cpu/layernorm_backward.h"

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

// grad_out, x, residual, grad_s: (N, H); bias, weight, grad_w, grad_b: (H,); mean, rstd: (N,) acc type
void bias_residual_layernorm_backward_kernel(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor* bias,
                                             const at::Tensor& residual, const at::Tensor& weight,
                                             const at::Tensor& mean, const at::Tensor& rstd, at::Tensor& grad_s,
                                             at::Tensor& grad_w, at::Tensor& grad_b) {
  const int64_t H = x.size(-1);
  const int64_t N = x.numel() / H;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bias_residual_layernorm_backward", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* rp = residual.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias ? bias->const_data_ptr<scalar_t>() : nullptr;
    layernorm_backward_rows<scalar_t>(
        N, H, [=](int64_t r) { return sum_row(xp + r * H, rp + r * H, bp); }, grad_out.const_data_ptr<scalar_t>(),
        weight.const_data_ptr<scalar_t>(), mean.const_data_ptr<A>(), rstd.const_data_ptr<A>(),
        grad_s.mutable_data_ptr<scalar_t>(), grad_w.mutable_data_ptr<scalar_t>(), grad_b.mutable_data_ptr<scalar_t>());
  });
}

}  // namespace CPU_CAPABILITY

#ifdef CPU_CAPABILITY_DEFAULT
FASTBERT_CPU_DECLARE(void bias_residual_layernorm_backward_kernel(
    const at::Tensor&, const at::Tensor&, const at::Tensor*, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&))

static void check_like_x(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.sizes() == x.sizes(), "bias_residual_layernorm_backward: ", name, " must have x's shape ", x.sizes(),
              ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type() && t.device().is_cpu(), "bias_residual_layernorm_backward: ", name,
              " must be a CPU tensor of x's dtype ", x.scalar_type(), ", got ", t.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bias_residual_layernorm_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const std::optional<at::Tensor>& bias, const at::Tensor& residual,
    const at::Tensor& ln_weight, const at::Tensor& mean, const at::Tensor& rstd) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) > 0,
              "bias_residual_layernorm_backward: x must have a non-empty last dimension, got ", x.sizes());
  TORCH_CHECK(x.device().is_cpu(), "bias_residual_layernorm_backward: x must be a CPU tensor");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "bias_residual_layernorm_backward: x must be floating point, got ",
              x.scalar_type());
  check_like_x(grad_out, "grad_out", x);
  check_like_x(residual, "residual", x);
  const int64_t H = x.size(-1);
  for (auto [t, name] : {std::pair{bias ? &*bias : nullptr, "bias"}, std::pair{&ln_weight, "ln_weight"}}) {
    if (t == nullptr) continue;
    TORCH_CHECK(t->dim() == 1 && t->size(0) == H, "bias_residual_layernorm_backward: ", name, " must have shape (", H,
                ",) to match x's last dimension, got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device().is_cpu(), "bias_residual_layernorm_backward: ", name,
                " must be a CPU tensor of x's dtype ", x.scalar_type(), ", got ", t->scalar_type());
  }
  const auto stat_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto stat_shape = x.sizes().slice(0, x.dim() - 1);
  for (auto [t, name] : {std::pair{&mean, "mean"}, std::pair{&rstd, "rstd"}}) {
    TORCH_CHECK(t->sizes() == stat_shape, "bias_residual_layernorm_backward: ", name, " must have shape ", stat_shape,
                " (x's leading dimensions), got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == stat_dtype && t->device().is_cpu(), "bias_residual_layernorm_backward: ", name,
                " must be a CPU tensor of dtype ", stat_dtype, " (the forward's statistics), got ", t->scalar_type());
  }
  auto xc = x.contiguous();
  auto grad_s = at::empty_like(xc);
  auto grad_w = at::zeros({H}, ln_weight.options());
  auto grad_b = at::zeros({H}, ln_weight.options());
  if (xc.numel() > 0) {
    at::Tensor bc = bias ? bias->contiguous() : at::Tensor();
    FASTBERT_CPU_DISPATCH(bias_residual_layernorm_backward_kernel, grad_out.contiguous(), xc, bias ? &bc : nullptr,
                          residual.contiguous(), ln_weight.contiguous(), mean.contiguous(), rstd.contiguous(), grad_s,
                          grad_w, grad_b);
  }
  return {grad_s, grad_w, grad_b};
}

TORCH_LIBRARY_IMPL(fastbert, CPU, m) {
  m.impl("bias_residual_layernorm_backward", &bias_residual_layernorm_backward_cpu);
}
#endif

}  // namespace fastbert::cpu
