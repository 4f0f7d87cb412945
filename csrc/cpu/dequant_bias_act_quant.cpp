// dequant_bias_act_quant: the FFN's middle in int8 inference, between its two int8 GEMMs.
//   h = act(acc * x_scale[t] * w_scale[n] + bias[n])      (fp32, in that order)
//   q, scale = the int8 rows of h * smooth with their dynamic scales (csrc/cpu/quant.h)
//
// Fuses the first GEMM's dequantization, bias and activation with the second GEMM's activation quantization:
// the unfused version writes and re-reads the (T, 4H) activation twice (float h, then its quantization); here
// each row of acc (int32) is read once and only q (int8, a quarter of acc's bytes) is written. Per row: one
// pass computes h * smooth into an fp32 scratch row (in L1) and its max |.|, a second rounds the scratch row
// (quantize_row). Parallel over rows; the activation is a template argument (csrc/cpu/activation_vec.h), so
// each gets its own inlined loop.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "activation.h"
#include "cpu/activation_vec.h"
#include "cpu/isa.h"
#include "cpu/quant.h"
#include "cpu/vec.h"

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

template <Activation A, typename B>
void dequant_bias_act_quant_rows(const int32_t* ap, const float* xs, const float* ws, const B* bp, const float* smooth,
                                 int64_t rows, int64_t N, int8_t* qp, float* sp) {
  at::parallel_for(0, rows, row_grain(N), [&](int64_t begin, int64_t end) {
    ScratchRow s(N);
    for (int64_t r = begin; r < end; ++r) {
      const int32_t* ar = ap + r * N;
      const FVec x(xs[r]);
      auto h = [=](int64_t c, int64_t n) {
        return apply_activation<A>(load_int32_as_float(ar + c, n) * x * loadf(ws + c, n) + FVec(load_acc(bp + c, n)));
      };
      quantize_row(h, N, smooth, s.p, qp + r * N, sp + r);
    }
  });
}

void dequant_bias_act_quant_kernel(const at::Tensor& acc, const at::Tensor& x_scale, const at::Tensor& w_scale,
                                   const at::Tensor& bias, Activation act, const float* smooth, at::Tensor& q,
                                   at::Tensor& scale) {
  const int32_t* ap = acc.const_data_ptr<int32_t>();
  const float* xs = x_scale.const_data_ptr<float>();
  const float* ws = w_scale.const_data_ptr<float>();
  int8_t* qp = q.mutable_data_ptr<int8_t>();
  float* sp = scale.mutable_data_ptr<float>();
  const int64_t rows = acc.size(0), N = acc.size(1);
  with_activation(act, [&]<Activation A>() {
    if (bias.scalar_type() == at::kBFloat16) {
      dequant_bias_act_quant_rows<A>(ap, xs, ws, bias.const_data_ptr<c10::BFloat16>(), smooth, rows, N, qp, sp);
    } else {
      dequant_bias_act_quant_rows<A>(ap, xs, ws, bias.const_data_ptr<float>(), smooth, rows, N, qp, sp);
    }
  });
}

}  // namespace CPU_CAPABILITY

#ifdef CPU_CAPABILITY_DEFAULT
FASTBERT_CPU_DECLARE(void dequant_bias_act_quant_kernel(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                        const at::Tensor&, Activation, const float*, at::Tensor&,
                                                        at::Tensor&))

std::tuple<at::Tensor, at::Tensor> dequant_bias_act_quant_cpu(const at::Tensor& acc, const at::Tensor& x_scale,
                                                              const at::Tensor& w_scale, const at::Tensor& bias,
                                                              c10::string_view activation,
                                                              const std::optional<at::Tensor>& smooth) {
  constexpr const char* op = "dequant_bias_act_quant";
  Activation act;
  TORCH_CHECK_VALUE(parse_activation(std::string(activation), &act), op, ": unknown activation '", activation,
                    "'; expected one of ", kActivationNames);
  check_int32_acc(op, acc);
  const int64_t T = acc.size(0), N = acc.size(1);
  check_row_scale(op, "x_scale", x_scale, T, "T");
  check_row_scale(op, "w_scale", w_scale, N, "N");
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == N &&
                  (bias.scalar_type() == at::kFloat || bias.scalar_type() == at::kBFloat16) && bias.device().is_cpu(),
              op, ": bias must be a float32 or bfloat16 CPU tensor of shape (N,) = (", N, ",), got ",
              bias.scalar_type(), " ", bias.sizes());
  check_smooth(op, smooth, N, "N");
  auto q = at::empty({T, N}, acc.options().dtype(at::kChar));
  auto scale = at::empty({T}, acc.options().dtype(at::kFloat));
  if (N == 0) {
    scale.fill_(1.0);
  } else if (T > 0) {
    at::Tensor sc = smooth ? smooth->contiguous() : at::Tensor();
    FASTBERT_CPU_DISPATCH(dequant_bias_act_quant_kernel, acc.contiguous(), x_scale.contiguous(), w_scale.contiguous(),
                          bias.contiguous(), act, smooth ? sc.const_data_ptr<float>() : nullptr, q, scale);
  }
  return {q, scale};
}

TORCH_LIBRARY_IMPL(fastbert, CPU, m) { m.impl("dequant_bias_act_quant", &dequant_bias_act_quant_cpu); }
#endif

}  // namespace fastbert::cpu
