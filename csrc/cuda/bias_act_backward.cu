// bias_act_backward on CUDA: argument checks and the launch of csrc/cuda/bias_act_backward.cuh.
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "cuda/bias_act_backward.cuh"
#include "cuda/host.h"

namespace fastbert::cuda {

at::Tensor bias_act_backward_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& bias,
                                  c10::string_view activation) {
  constexpr const char* op = "bias_act_backward";
  Activation act;
  TORCH_CHECK_VALUE(parse_activation(std::string(activation), &act), op, ": unknown activation '", activation,
                    "'; expected one of ", kActivationNames);
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least 1 dimension, got ", x.dim());
  TORCH_CHECK(grad.sizes() == x.sizes(), op, ": grad must have x's shape ", x.sizes(), ", got ", grad.sizes());
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == x.size(-1), op, ": bias must have shape (", x.size(-1),
              ",) to match x's last dimension, got ", bias.sizes());
  check_cuda(x, op, "x");
  check_float_dtype(x, op, "x");
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), op, ": grad dtype ", grad.scalar_type(), " must match x dtype ",
              x.scalar_type());
  TORCH_CHECK(bias.scalar_type() == x.scalar_type(), op, ": bias dtype ", bias.scalar_type(), " must match x dtype ",
              x.scalar_type());
  check_same_device(grad, x, op, "grad");
  check_same_device(bias, x, op, "bias");
  auto gc = grad.contiguous();
  auto xc = x.contiguous();
  auto bc = bias.contiguous();
  auto grad_input = at::empty_like(xc);
  if (xc.numel() == 0) return grad_input;
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FASTBERT_DISPATCH_FLOAT(x.scalar_type(), op, [&] {
    const auto p =
        bias_act_backward_params(BiasActBackwardParams<scalar_t>{.grad = gc.const_data_ptr<scalar_t>(),
                                                                 .x = xc.const_data_ptr<scalar_t>(),
                                                                 .bias = bc.const_data_ptr<scalar_t>(),
                                                                 .grad_input = grad_input.mutable_data_ptr<scalar_t>(),
                                                                 .numel = xc.numel(),
                                                                 .C = xc.size(-1),
                                                                 .act = act});
    launch(bias_act_backward_launch(p), stream, p);
  });
  return grad_input;
}

TORCH_LIBRARY_IMPL(fastbert, CUDA, m) { m.impl("bias_act_backward", &bias_act_backward_cuda); }

}  // namespace fastbert::cuda
