// bias_act: out = act(x + bias), row by row over (N, C).
//
// Fuses the bias add of the FFN's first GEMM with its activation: one read of x, one write of out, instead of
// the three passes (add, activation, copy) of the unfused version. Parallel over rows; each row is walked in
// Vectorized<acc> chunks (AVX-512: 16 floats) with a masked tail, computed in fp32 (fp64 for double).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "activation.h"
#include "cpu/activation_vec.h"
#include "cpu/isa.h"
#include "cpu/vec.h"

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

template <Activation A, typename scalar_t>
void bias_act_rows(const scalar_t* xp, const scalar_t* bp, scalar_t* op, int64_t N, int64_t C) {
  constexpr int64_t W = vec_width<scalar_t>();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(C, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* xr = xp + r * C;
      scalar_t* orow = op + r * C;
      int64_t c = 0;
      for (; c + W <= C; c += W) store_acc(orow + c, apply_activation<A>(load_acc(xr + c) + load_acc(bp + c)));
      if (c < C) {
        const int64_t n = C - c;
        store_acc(orow + c, apply_activation<A>(load_acc(xr + c, n) + load_acc(bp + c, n)), n);
      }
    }
  });
}

void bias_act_kernel(const at::Tensor& x, const at::Tensor& bias, at::Tensor& out, Activation act) {
  const int64_t C = x.size(-1);
  const int64_t N = C == 0 ? 0 : x.numel() / C;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bias_act", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    with_activation(act, [&]<Activation A>() { bias_act_rows<A>(xp, bp, op, N, C); });
  });
}

}  // namespace CPU_CAPABILITY

#ifdef CPU_CAPABILITY_DEFAULT
FASTBERT_CPU_DECLARE(void bias_act_kernel(const at::Tensor&, const at::Tensor&, at::Tensor&, Activation))

at::Tensor bias_act_cpu(const at::Tensor& x, const at::Tensor& bias, c10::string_view activation) {
  Activation act;
  TORCH_CHECK_VALUE(parse_activation(std::string(activation), &act), "bias_act: unknown activation '", activation,
                    "'; expected one of ", kActivationNames);
  TORCH_CHECK(x.dim() >= 1, "bias_act: x must have at least 1 dimension, got ", x.dim());
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == x.size(-1), "bias_act: bias must have shape (", x.size(-1),
              ",) to match x's last dimension, got ", bias.sizes());
  TORCH_CHECK(bias.scalar_type() == x.scalar_type(), "bias_act: bias dtype ", bias.scalar_type(),
              " must match x dtype ", x.scalar_type());
  TORCH_CHECK(x.device().is_cpu() && bias.device().is_cpu(), "bias_act: x and bias must be CPU tensors");
  auto xc = x.contiguous();
  auto bc = bias.contiguous();
  auto out = at::empty_like(xc);
  if (xc.numel() > 0) FASTBERT_CPU_DISPATCH(bias_act_kernel, xc, bc, out, act);
  return out;
}

TORCH_LIBRARY_IMPL(fastbert, CPU, m) { m.impl("bias_act", &bias_act_cpu); }
#endif

}  // namespace fastbert::cpu
