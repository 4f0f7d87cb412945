// bias_residual_layernorm on CUDA: argument checks and the launch of csrc/cuda/bias_residual_layernorm.cuh.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "cuda/bias_residual_layernorm.cuh"
#include "cuda/host.h"
#include "cuda/layernorm_host.h"

namespace fastbert::cuda {

namespace {
void check_vector(const at::Tensor& t, const at::Tensor& x, int64_t H, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == H, "bias_residual_layernorm: ", name, " must have shape (", H, ",), got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "bias_residual_layernorm: ", name, " dtype ", t.scalar_type(),
              " must match x dtype ", x.scalar_type());
  check_same_device(t, x, "bias_residual_layernorm", name);
}
}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> bias_residual_layernorm_cuda(const at::Tensor& x,
                                                                            const std::optional<at::Tensor>& bias,
                                                                            const at::Tensor& residual,
                                                                            const at::Tensor& ln_weight,
                                                                            const at::Tensor& ln_bias, double eps) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) > 0, "bias_residual_layernorm: x must have a non-empty last dimension, got ",
              x.sizes());
  check_cuda(x, "bias_residual_layernorm", "x");
  check_float_dtype(x, "bias_residual_layernorm", "x");
  TORCH_CHECK(residual.sizes() == x.sizes(), "bias_residual_layernorm: residual must have x's shape ", x.sizes(),
              ", got ", residual.sizes());
  TORCH_CHECK(residual.scalar_type() == x.scalar_type(), "bias_residual_layernorm: residual dtype ",
              residual.scalar_type(), " must match x dtype ", x.scalar_type());
  check_same_device(residual, x, "bias_residual_layernorm", "residual");
  TORCH_CHECK_VALUE(eps >= 0, "bias_residual_layernorm: eps must be >= 0, got ", eps);
  const int64_t H = x.size(-1);
  if (bias) check_vector(*bias, x, H, "bias");
  check_vector(ln_weight, x, H, "ln_weight");
  check_vector(ln_bias, x, H, "ln_bias");
  check_layernorm_hidden(H, "bias_residual_layernorm");
  auto xc = x.contiguous();
  auto rc = residual.contiguous();
  auto bc = bias ? bias->contiguous() : at::Tensor();
  auto wc = ln_weight.contiguous();
  auto lc = ln_bias.contiguous();
  auto out = at::empty_like(xc);
  auto mean = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(at::kFloat));
  auto rstd = at::empty_like(mean);
  const int64_t N = xc.numel() / H;
  if (N == 0) return {out, mean, rstd};
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FASTBERT_DISPATCH_FLOAT(x.scalar_type(), "bias_residual_layernorm", [&] {
    const auto p = bias_residual_layernorm_params(
        BiasResidualLayerNormParams<scalar_t>{.x = xc.const_data_ptr<scalar_t>(),
                                              .bias = bias ? bc.const_data_ptr<scalar_t>() : nullptr,
                                              .residual = rc.const_data_ptr<scalar_t>(),
                                              .gamma = wc.const_data_ptr<scalar_t>(),
                                              .beta = lc.const_data_ptr<scalar_t>(),
                                              .out = out.mutable_data_ptr<scalar_t>(),
                                              .mean = mean.mutable_data_ptr<float>(),
                                              .rstd = rstd.mutable_data_ptr<float>(),
                                              .N = N,
                                              .H = H,
                                              .eps = static_cast<float>(eps)});
    launch(bias_residual_layernorm_launch(p), stream, p);
  });
  return {out, mean, rstd};
}

TORCH_LIBRARY_IMPL(fastbert, CUDA, m) { m.impl("bias_residual_layernorm", &bias_residual_layernorm_cuda); }

}  // namespace fastbert::cuda
