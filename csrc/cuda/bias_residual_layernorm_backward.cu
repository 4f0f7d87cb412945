// bias_residual_layernorm_backward on CUDA: argument checks and the launches of
// csrc/cuda/bias_residual_layernorm_backward.cuh (row kernel) and layernorm_backward.cuh (parameter reduction).
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "cuda/bias_residual_layernorm_backward.cuh"
#include "cuda/host.h"
#include "cuda/layernorm_host.h"

namespace fastbert::cuda {

namespace {
constexpr const char* kOp = "bias_residual_layernorm_backward";

void check_like_x(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.sizes() == x.sizes(), kOp, ": ", name, " must have x's shape ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), kOp, ": ", name, " dtype ", t.scalar_type(), " must match x dtype ",
              x.scalar_type());
  check_same_device(t, x, kOp, name);
}

void check_vector(const at::Tensor& t, const at::Tensor& x, int64_t H, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == H, kOp, ": ", name, " must have shape (", H,
              ",) to match x's last dimension, got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), kOp, ": ", name, " dtype ", t.scalar_type(), " must match x dtype ",
              x.scalar_type());
  check_same_device(t, x, kOp, name);
}

void check_stat(const at::Tensor& t, const at::Tensor& x, const char* name) {
  const auto shape = x.sizes().slice(0, x.dim() - 1);
  TORCH_CHECK(t.sizes() == shape, kOp, ": ", name, " must have shape ", shape, " (x's leading dimensions), got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, kOp, ": ", name, " must be float32 (the forward's statistics), got ",
              t.scalar_type());
  check_same_device(t, x, kOp, name);
}
}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> bias_residual_layernorm_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const std::optional<at::Tensor>& bias, const at::Tensor& residual,
    const at::Tensor& ln_weight, const at::Tensor& mean, const at::Tensor& rstd) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) > 0, kOp, ": x must have a non-empty last dimension, got ", x.sizes());
  check_cuda(x, kOp, "x");
  check_float_dtype(x, kOp, "x");
  check_like_x(grad_out, x, "grad_out");
  check_like_x(residual, x, "residual");
  const int64_t H = x.size(-1);
  if (bias) check_vector(*bias, x, H, "bias");
  check_vector(ln_weight, x, H, "ln_weight");
  check_stat(mean, x, "mean");
  check_stat(rstd, x, "rstd");
  auto xc = x.contiguous();
  auto grad_s = at::empty_like(xc);
  auto grad_w = at::zeros({H}, ln_weight.options());
  auto grad_b = at::zeros({H}, ln_weight.options());
  const int64_t N = xc.numel() / H;
  if (N == 0) return {grad_s, grad_w, grad_b};
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t smem_limit = ln_backward_smem_limit(H, kOp);
  auto gc = grad_out.contiguous();
  auto rc = residual.contiguous();
  auto bc = bias ? bias->contiguous() : at::Tensor();
  auto wc = ln_weight.contiguous();
  auto mc = mean.contiguous();
  auto sc = rstd.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FASTBERT_DISPATCH_FLOAT(x.scalar_type(), kOp, [&] {
    const auto rows = brln_backward_launch<scalar_t>(N, H, smem_limit);
    auto partials = at::empty({int64_t(rows.grid.x), 2, H}, x.options().dtype(at::kFloat));
    const auto p =
        brln_backward_params(BrlnBackwardParams<scalar_t>{.grad_out = gc.const_data_ptr<scalar_t>(),
                                                          .x = xc.const_data_ptr<scalar_t>(),
                                                          .bias = bias ? bc.const_data_ptr<scalar_t>() : nullptr,
                                                          .residual = rc.const_data_ptr<scalar_t>(),
                                                          .gamma = wc.const_data_ptr<scalar_t>(),
                                                          .mean = mc.const_data_ptr<float>(),
                                                          .rstd = sc.const_data_ptr<float>(),
                                                          .grad_s = grad_s.mutable_data_ptr<scalar_t>(),
                                                          .partials = partials.mutable_data_ptr<float>(),
                                                          .N = N,
                                                          .H = H});
    launch(rows, stream, p);
    launch(ln_backward_reduce_launch<scalar_t>(H), stream, p.partials, int64_t(rows.grid.x), H,
           grad_w.mutable_data_ptr<scalar_t>(), grad_b.mutable_data_ptr<scalar_t>());
  });
  return {grad_s, grad_w, grad_b};
}

TORCH_LIBRARY_IMPL(fastbert, CUDA, m) {
  m.impl("bias_residual_layernorm_backward", &bias_residual_layernorm_backward_cuda);
}

}  // namespace fastbert::cuda
