// quantize_rows and dequantize_rows: the two ends of an int8 GEMM (torch._int_mm) where no other op is fused.
//
// quantize_rows: x (T, K) float32/bf16 -> q int8 (T, K), the dynamic per-row scale (T,) and, asymmetric, shift
// (T,), with an optional per-channel smooth (K,) multiplied in first (csrc/cpu/quant.h has the rule). One read of x,
// one write of q (a quarter of x's float32 bytes): each row is read once into an fp32 scratch row while its
// max |.| is tracked, then rounded from the scratch row (in L1). Used where the activation's producer has no
// fused quantizing variant (the embeddings' output).
//
// dequantize_rows: acc int32 (T, N) -> out (T, N) float32/bf16 = acc * x_scale[t] * w_scale[n] (+ x_shift[t] *
// w_sum[n] for a shifted input), in that order in fp32. One read of acc, one write of out. Used for the QKV GEMM, whose
// bias the attention op adds itself.
//
// Both parallel over rows (about 32K elements per task), each row in Vectorized<float> chunks with a masked
// tail.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cpu/isa.h"
#include "cpu/quant.h"
#include "cpu/vec.h"

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

template <typename T>
void quantize_rows_typed(const T* xp, const float* smooth, int64_t rows, const QuantOut& out) {
  const int64_t K = out.K;
  at::parallel_for(0, rows, row_grain(K), [&](int64_t begin, int64_t end) {
    ScratchRow s(K);
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = xp + r * K;
      quantize_row([=](int64_t c, int64_t n) { return FVec(load_acc(xr + c, n)); }, smooth, s.p, out, r);
    }
  });
}

void quantize_rows_kernel(const at::Tensor& x, const float* smooth, const QuantOut& out) {
  if (x.scalar_type() == at::kBFloat16) {
    quantize_rows_typed(x.const_data_ptr<c10::BFloat16>(), smooth, x.size(0), out);
  } else {
    quantize_rows_typed(x.const_data_ptr<float>(), smooth, x.size(0), out);
  }
}

template <typename T>
void dequantize_rows_typed(const Dequant& d, int64_t rows, T* op) {
  const int64_t N = d.N;
  at::parallel_for(0, rows, row_grain(N), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T* orow = op + r * N;
      int64_t c = 0;
      for (; c + kFW <= N; c += kFW) store_acc(orow + c, dequant(d, r, c));
      if (c < N) store_acc(orow + c, dequant(d, r, c, N - c), N - c);
    }
  });
}

void dequantize_rows_kernel(const Dequant& d, int64_t rows, at::Tensor& out) {
  if (out.scalar_type() == at::kBFloat16) {
    dequantize_rows_typed(d, rows, out.mutable_data_ptr<c10::BFloat16>());
  } else {
    dequantize_rows_typed(d, rows, out.mutable_data_ptr<float>());
  }
}

}  // namespace CPU_CAPABILITY

#ifdef CPU_CAPABILITY_DEFAULT
FASTBERT_CPU_DECLARE(void quantize_rows_kernel(const at::Tensor&, const float*, const QuantOut&))
FASTBERT_CPU_DECLARE(void dequantize_rows_kernel(const Dequant&, int64_t, at::Tensor&))

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_rows_cpu(const at::Tensor& x,
                                                                 const std::optional<at::Tensor>& smooth,
                                                                 bool asymmetric) {
  TORCH_CHECK(
      x.dim() == 2 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) && x.device().is_cpu(),
      "quantize_rows: x must be a float32 or bfloat16 CPU tensor of shape (T, K), got ", x.scalar_type(), " ",
      x.sizes());
  const int64_t T = x.size(0), K = x.size(1);
  check_smooth("quantize_rows", smooth, K, "K");
  auto xc = x.contiguous();
  auto q = at::empty({T, K}, x.options().dtype(at::kChar));
  auto scale = at::empty({T}, x.options().dtype(at::kFloat));
  auto shift = shift_output(x, T, asymmetric);
  if (K == 0) {
    scale.fill_(1.0);
  } else if (T > 0) {
    at::Tensor sc;
    const QuantOut out{q.mutable_data_ptr<int8_t>(), scale.mutable_data_ptr<float>(),
                       asymmetric ? shift.mutable_data_ptr<float>() : nullptr, K};
    FASTBERT_CPU_DISPATCH(quantize_rows_kernel, xc, optional_ptr(smooth, sc), out);
  }
  return {q, scale, shift};
}

at::Tensor dequantize_rows_cpu(const at::Tensor& acc, const at::Tensor& x_scale, const at::Tensor& w_scale,
                               at::ScalarType dtype, const std::optional<at::Tensor>& x_shift,
                               const std::optional<at::Tensor>& w_sum) {
  check_int32_acc("dequantize_rows", acc);
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kBFloat16,
                    "dequantize_rows: dtype must be float32 or bfloat16, got ", dtype);
  const int64_t T = acc.size(0), N = acc.size(1);
  check_row_scale("dequantize_rows", "x_scale", x_scale, T, "T");
  check_row_scale("dequantize_rows", "w_scale", w_scale, N, "N");
  check_shift("dequantize_rows", x_shift, w_sum, T, N);
  auto out = at::empty({T, N}, acc.options().dtype(dtype));
  if (out.numel() > 0) {
    const at::Tensor ac = acc.contiguous(), xs = x_scale.contiguous(), ws = w_scale.contiguous();
    at::Tensor xsh, wsm;
    const Dequant d{ac.const_data_ptr<int32_t>(), xs.const_data_ptr<float>(), ws.const_data_ptr<float>(),
                    optional_ptr(x_shift, xsh),   optional_ptr(w_sum, wsm),   N};
    FASTBERT_CPU_DISPATCH(dequantize_rows_kernel, d, T, out);
  }
  return out;
}

TORCH_LIBRARY_IMPL(fastbert, CPU, m) {
  m.impl("quantize_rows", &quantize_rows_cpu);
  m.impl("dequantize_rows", &dequantize_rows_cpu);
}
#endif

}  // namespace fastbert::cpu
