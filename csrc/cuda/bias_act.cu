// bias_act on CUDA: argument checks and the launch of csrc/cuda/bias_act.cuh (see its comment for the design).
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "cuda/bias_act.cuh"
#include "cuda/host.h"

namespace fastbert::cuda {

at::Tensor bias_act_cuda(const at::Tensor& x, const at::Tensor& bias, c10::string_view activation) {
  Activation act;
  TORCH_CHECK_VALUE(parse_activation(std::string(activation), &act), "bias_act: unknown activation '", activation,
                    "'; expected one of ", kActivationNames);
  TORCH_CHECK(x.dim() >= 1, "bias_act: x must have at least 1 dimension, got ", x.dim());
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == x.size(-1), "bias_act: bias must have shape (", x.size(-1),
              ",) to match x's last dimension, got ", bias.sizes());
  TORCH_CHECK(bias.scalar_type() == x.scalar_type(), "bias_act: bias dtype ", bias.scalar_type(),
              " must match x dtype ", x.scalar_type());
  check_cuda(x, "bias_act", "x");
  check_same_device(bias, x, "bias_act", "bias");
  check_float_dtype(x, "bias_act", "x");
  auto xc = x.contiguous();
  auto bc = bias.contiguous();
  auto out = at::empty_like(xc);
  if (xc.numel() == 0) return out;
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FASTBERT_DISPATCH_FLOAT(x.scalar_type(), "bias_act", [&] {
    const auto p = bias_act_params(BiasActParams<scalar_t>{.x = xc.const_data_ptr<scalar_t>(),
                                                           .bias = bc.const_data_ptr<scalar_t>(),
                                                           .out = out.mutable_data_ptr<scalar_t>(),
                                                           .numel = xc.numel(),
                                                           .C = xc.size(-1),
                                                           .act = act});
    launch(bias_act_launch(p), stream, p);
  });
  return out;
}

TORCH_LIBRARY_IMPL(fastbert, CUDA, m) { m.impl("bias_act", &bias_act_cuda); }

}  // namespace fastbert::cuda
