// dequant_bias_act_quant: the FFN's middle in int8 inference, between its two int8 GEMMs.
//   h = act(acc * x_scale[t] * w_scale[n] (+ x_shift[t] * w_sum[n]) + bias[n])      (fp32, in that order)
//   q, scale (, shift) = the int8 rows of h * smooth (csrc/cpu/quant.h), asymmetric on request: a GELU's output
//   is one-sided, and a shift gives it the full 255 levels
//
// Fuses the first GEMM's dequantization, bias and activation with the second GEMM's activation quantization:
// the unfused version writes and re-reads the (T, 4H) activation twice (float h, then its quantization); here
// each row of acc (int32) is read once and only q (int8, a quarter of acc's bytes) is written. Per row: one
// pass computes h * smooth into an fp32 scratch row (in L1) and its range, a second rounds the scratch row
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
void dequant_bias_act_quant_rows(const Dequant& d, const B* bp, const float* smooth, int64_t rows,
                                 const QuantOut& out) {
  at::parallel_for(0, rows, row_grain(d.N), [&](int64_t begin, int64_t end) {
    ScratchRow s(d.N);
    for (int64_t r = begin; r < end; ++r) {
      auto h = [&](int64_t c, int64_t n) {
        return apply_activation<A>(dequant(d, r, c, n) + FVec(load_acc(bp + c, n)));
      };
      quantize_row(h, smooth, s.p, out, r);
    }
  });
}

void dequant_bias_act_quant_kernel(const Dequant& d, int64_t rows, const at::Tensor& bias, Activation act,
                                   const float* smooth, const QuantOut& out) {
  with_activation(act, [&]<Activation A>() {
    if (bias.scalar_type() == at::kBFloat16) {
      dequant_bias_act_quant_rows<A>(d, bias.const_data_ptr<c10::BFloat16>(), smooth, rows, out);
    } else {
      dequant_bias_act_quant_rows<A>(d, bias.const_data_ptr<float>(), smooth, rows, out);
    }
  });
}

}  // namespace CPU_CAPABILITY

#ifdef CPU_CAPABILITY_DEFAULT
FASTBERT_CPU_DECLARE(void dequant_bias_act_quant_kernel(const Dequant&, int64_t, const at::Tensor&, Activation,
                                                        const float*, const QuantOut&))

std::tuple<at::Tensor, at::Tensor, at::Tensor> dequant_bias_act_quant_cpu(
    const at::Tensor& acc, const at::Tensor& x_scale, const at::Tensor& w_scale, const at::Tensor& bias,
    c10::string_view activation, const std::optional<at::Tensor>& smooth, const std::optional<at::Tensor>& x_shift,
    const std::optional<at::Tensor>& w_sum, bool asymmetric) {
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
  check_shift(op, x_shift, w_sum, T, N);
  auto q = at::empty({T, N}, acc.options().dtype(at::kChar));
  auto scale = at::empty({T}, acc.options().dtype(at::kFloat));
  auto shift = shift_output(acc, T, asymmetric);
  if (N == 0) {
    scale.fill_(1.0);
  } else if (T > 0) {
    const at::Tensor ac = acc.contiguous(), xs = x_scale.contiguous(), ws = w_scale.contiguous();
    at::Tensor sc, xsh, wsm;
    const Dequant d{ac.const_data_ptr<int32_t>(), xs.const_data_ptr<float>(), ws.const_data_ptr<float>(),
                    optional_ptr(x_shift, xsh),   optional_ptr(w_sum, wsm),   N};
    const QuantOut out{q.mutable_data_ptr<int8_t>(), scale.mutable_data_ptr<float>(),
                       asymmetric ? shift.mutable_data_ptr<float>() : nullptr, N};
    FASTBERT_CPU_DISPATCH(dequant_bias_act_quant_kernel, d, T, bias.contiguous(), act, optional_ptr(smooth, sc), out);
  }
  return {q, scale, shift};
}

TORCH_LIBRARY_IMPL(fastbert, CPU, m) { m.impl("dequant_bias_act_quant", &dequant_bias_act_quant_cpu); }
#endif

}  // namespace fastbert::cpu
