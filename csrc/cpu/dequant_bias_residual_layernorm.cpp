// dequant_bias_residual_layernorm: the epilogue of the attention-output and FFN-output GEMMs in int8 inference.
//   s   = acc * x_scale[t] * w_scale[n] + bias[n] + residual[t, n]        (fp32, in that order)
//   out = LayerNorm(s) * weight + beta                                   (residual's dtype, fp32 statistics)
//   q, scale = quantize_rows(out, smooth) when quantize                  (the next GEMM's int8 input)
//
// Fuses the GEMM's dequantization, the bias and residual adds, the LayerNorm and (optionally) the next GEMM's
// activation quantization: each row of acc (int32) and residual is read once, out is written once, and q (a
// quarter of out's float32 bytes) once. Per row pair: one pass computes s into fp32 scratch rows with shifted-sum
// statistics (csrc/cpu/layernorm.h's fill_row_pair_stats, stable for eps = 1e-12 on BERT's outlier channels);
// a second writes the normalised row, and when quantizing stores out * smooth back over the scratch row
// (in place: column c is read before it is written) while tracking max |.|; a third rounds the scratch row into
// int8 (csrc/cpu/quant.h). q quantizes exactly the values written to out (bf16-rounded for a bf16 out), so it
// matches quantize_rows(out, smooth). Parallel over rows.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cpu/isa.h"
#include "cpu/layernorm.h"
#include "cpu/quant.h"
#include "cpu/vec.h"

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

template <typename T>
void dequant_bias_residual_layernorm_typed(const int32_t* ap, const float* xs, const float* ws, const T* bp,
                                           const T* rp, const T* wp, const T* betap, double eps, int64_t rows,
                                           int64_t H, T* op, const float* smooth, int8_t* qp, float* sp) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / H), [&](int64_t begin, int64_t end) {
    ScratchRow scratch0(H), scratch1(H);
    float* s0 = scratch0.p;
    float* s1 = scratch1.p;
    auto fill = [=](int64_t r) {  // row r's reader: dequantized acc (+ bias) + residual
      const int32_t* ar = ap + r * H;
      const T* rr = rp + r * H;
      const FVec x(xs[r]);
      return [=](int64_t c, int64_t n) {
        FVec v = load_int32_as_float(ar + c, n) * x * loadf(ws + c, n);
        if (bp) v = v + FVec(load_acc(bp + c, n));
        return v + FVec(load_acc(rr + c, n));
      };
    };
    // Normalises row r from its scratch row s, writes it to out and quantizes it.
    auto normalise_quantize = [&](int64_t r, float* s, float mean, float rstd) {
      T* orow = op + r * H;
      const FVec m(mean), rs(rstd);
      auto value = [=](int64_t c, int64_t n) {
        const FVec y =
            at::vec::fmadd((loadf(s + c, n) - m) * rs, FVec(load_acc(wp + c, n)), FVec(load_acc(betap + c, n)));
        store_acc(orow + c, y, n);
        return round_to<T>(y);
      };
      quantize_row(value, H, smooth, s, qp + r * H, sp + r);
    };
    float mean[2], rstd[2];
    int64_t r = begin;
    for (; r + 2 <= end; r += 2) {
      fill_row_pair_stats(fill(r), fill(r + 1), H, s0, s1, eps, mean, rstd);
      if (qp) {
        normalise_quantize(r, s0, mean[0], rstd[0]);
        normalise_quantize(r + 1, s1, mean[1], rstd[1]);
      } else {
        normalise_row_pair<T>(s0, s1, H, wp, betap, mean[0], rstd[0], mean[1], rstd[1], op + r * H, op + (r + 1) * H);
      }
    }
    if (r < end) {  // an odd row out: computed as a pair with itself
      fill_row_pair_stats(fill(r), fill(r), H, s0, s1, eps, mean, rstd);
      if (qp) normalise_quantize(r, s0, mean[0], rstd[0]);
      else normalise_row_pair<T>(s0, s0, H, wp, betap, mean[0], rstd[0], mean[0], rstd[0], op + r * H, op + r * H);
    }
  });
}

void dequant_bias_residual_layernorm_kernel(const at::Tensor& acc, const at::Tensor& x_scale, const at::Tensor& w_scale,
                                            const at::Tensor* bias, const at::Tensor& residual,
                                            const at::Tensor& weight, const at::Tensor& beta, double eps,
                                            at::Tensor& out, const float* smooth, at::Tensor* q, at::Tensor* scale) {
  const int32_t* ap = acc.const_data_ptr<int32_t>();
  const float* xs = x_scale.const_data_ptr<float>();
  const float* ws = w_scale.const_data_ptr<float>();
  int8_t* qp = q ? q->mutable_data_ptr<int8_t>() : nullptr;
  float* sp = scale ? scale->mutable_data_ptr<float>() : nullptr;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    dequant_bias_residual_layernorm_typed<T>(ap, xs, ws, bias ? bias->const_data_ptr<T>() : nullptr,
                                             residual.const_data_ptr<T>(), weight.const_data_ptr<T>(),
                                             beta.const_data_ptr<T>(), eps, acc.size(0), acc.size(1),
                                             out.mutable_data_ptr<T>(), smooth, qp, sp);
  };
  if (residual.scalar_type() == at::kBFloat16) run(c10::BFloat16());
  else run(float());
}

}  // namespace CPU_CAPABILITY

#ifdef CPU_CAPABILITY_DEFAULT
FASTBERT_CPU_DECLARE(void dequant_bias_residual_layernorm_kernel(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor*, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, double, at::Tensor&, const float*, at::Tensor*, at::Tensor*))

static void check_channel_vector(const char* name, const at::Tensor& t, int64_t N, const at::Tensor& residual) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == N && t.scalar_type() == residual.scalar_type() && t.device().is_cpu(),
              "dequant_bias_residual_layernorm: ", name, " must be a CPU tensor of residual's dtype ",
              residual.scalar_type(), " and shape (N,) = (", N, ",), got ", t.scalar_type(), " ", t.sizes());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dequant_bias_residual_layernorm_cpu(
    const at::Tensor& acc, const at::Tensor& x_scale, const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
    const at::Tensor& residual, const at::Tensor& weight, const at::Tensor& beta, double eps, bool quantize,
    const std::optional<at::Tensor>& smooth) {
  constexpr const char* op = "dequant_bias_residual_layernorm";
  check_int32_acc(op, acc);
  const int64_t T = acc.size(0), N = acc.size(1);
  TORCH_CHECK(N > 0, op, ": acc must have a non-empty last dimension (the LayerNorm's), got ", acc.sizes());
  check_row_scale(op, "x_scale", x_scale, T, "T");
  check_row_scale(op, "w_scale", w_scale, N, "N");
  TORCH_CHECK(residual.sizes() == acc.sizes() &&
                  (residual.scalar_type() == at::kFloat || residual.scalar_type() == at::kBFloat16) &&
                  residual.device().is_cpu(),
              op, ": residual must be a float32 or bfloat16 CPU tensor of acc's shape (T, N) = ", acc.sizes(), ", got ",
              residual.scalar_type(), " ", residual.sizes());
  if (bias) check_channel_vector("bias", *bias, N, residual);
  check_channel_vector("weight", weight, N, residual);
  check_channel_vector("beta", beta, N, residual);
  TORCH_CHECK_VALUE(eps >= 0, op, ": eps must be >= 0, got ", eps);
  check_smooth(op, smooth, N, "N");
  auto out = at::empty({T, N}, residual.options());
  // Without quantize: q and scale are empty (0,) tensors of their dtypes, and smooth (still checked) is unused.
  auto q = quantize ? at::empty({T, N}, residual.options().dtype(at::kChar))
                    : at::empty({0}, residual.options().dtype(at::kChar));
  auto scale = at::empty({quantize ? T : 0}, residual.options().dtype(at::kFloat));
  if (T > 0) {
    at::Tensor bc = bias ? bias->contiguous() : at::Tensor();
    at::Tensor sc = smooth ? smooth->contiguous() : at::Tensor();
    FASTBERT_CPU_DISPATCH(dequant_bias_residual_layernorm_kernel, acc.contiguous(), x_scale.contiguous(),
                          w_scale.contiguous(), bias ? &bc : nullptr, residual.contiguous(), weight.contiguous(),
                          beta.contiguous(), eps, out, smooth ? sc.const_data_ptr<float>() : nullptr,
                          quantize ? &q : nullptr, quantize ? &scale : nullptr);
  }
  return {out, q, scale};
}

TORCH_LIBRARY_IMPL(fastbert, CPU, m) {
  m.impl("dequant_bias_residual_layernorm", &dequant_bias_residual_layernorm_cpu);
}
#endif

}  // namespace fastbert::cpu
