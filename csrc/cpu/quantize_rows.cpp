// quantize_rows and dequantize_rows: the two ends of an int8 GEMM (torch._int_mm) where no other op is fused.
//
// quantize_rows: x (T, K) float32/bf16 -> q int8 (T, K) and the dynamic symmetric per-row scale (T,), with an
// optional per-channel smooth (K,) multiplied in first (csrc/cpu/quant.h has the scale rule). One read of x,
// one write of q (a quarter of x's float32 bytes): each row is read once into an fp32 scratch row while its
// max |.| is tracked, then rounded from the scratch row (in L1). Used where the activation's producer has no
// fused quantizing variant (the embeddings' output).
//
// dequantize_rows: acc int32 (T, N) -> out (T, N) float32/bf16 = acc * x_scale[t] * w_scale[n], in that order in
// fp32. One read of acc, one write of out. Used for the QKV GEMM, whose bias the attention op adds itself.
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
void quantize_rows_typed(const T* xp, const float* smooth, int64_t rows, int64_t K, int8_t* qp, float* sp) {
  at::parallel_for(0, rows, row_grain(K), [&](int64_t begin, int64_t end) {
    ScratchRow s(K);
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = xp + r * K;
      quantize_row([=](int64_t c, int64_t n) { return FVec(load_acc(xr + c, n)); }, K, smooth, s.p, qp + r * K, sp + r);
    }
  });
}

void quantize_rows_kernel(const at::Tensor& x, const float* smooth, at::Tensor& q, at::Tensor& scale) {
  const int64_t rows = x.size(0), K = x.size(1);
  int8_t* qp = q.mutable_data_ptr<int8_t>();
  float* sp = scale.mutable_data_ptr<float>();
  if (x.scalar_type() == at::kBFloat16) {
    quantize_rows_typed(x.const_data_ptr<c10::BFloat16>(), smooth, rows, K, qp, sp);
  } else {
    quantize_rows_typed(x.const_data_ptr<float>(), smooth, rows, K, qp, sp);
  }
}

template <typename T>
void dequantize_rows_typed(const int32_t* ap, const float* xs, const float* ws, int64_t rows, int64_t N, T* op) {
  at::parallel_for(0, rows, row_grain(N), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int32_t* ar = ap + r * N;
      T* orow = op + r * N;
      const FVec x(xs[r]);
      int64_t c = 0;
      for (; c + kFW <= N; c += kFW) store_acc(orow + c, load_int32_as_float(ar + c) * x * FVec::loadu(ws + c));
      if (c < N) {
        const int64_t n = N - c;
        store_acc(orow + c, load_int32_as_float(ar + c, n) * x * FVec::loadu(ws + c, n), n);
      }
    }
  });
}

void dequantize_rows_kernel(const at::Tensor& acc, const at::Tensor& x_scale, const at::Tensor& w_scale,
                            at::Tensor& out) {
  const int32_t* ap = acc.const_data_ptr<int32_t>();
  const float* xs = x_scale.const_data_ptr<float>();
  const float* ws = w_scale.const_data_ptr<float>();
  if (out.scalar_type() == at::kBFloat16) {
    dequantize_rows_typed(ap, xs, ws, acc.size(0), acc.size(1), out.mutable_data_ptr<c10::BFloat16>());
  } else {
    dequantize_rows_typed(ap, xs, ws, acc.size(0), acc.size(1), out.mutable_data_ptr<float>());
  }
}

}  // namespace CPU_CAPABILITY

#ifdef CPU_CAPABILITY_DEFAULT
FASTBERT_CPU_DECLARE(void quantize_rows_kernel(const at::Tensor&, const float*, at::Tensor&, at::Tensor&))
FASTBERT_CPU_DECLARE(void dequantize_rows_kernel(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&))

std::tuple<at::Tensor, at::Tensor> quantize_rows_cpu(const at::Tensor& x, const std::optional<at::Tensor>& smooth) {
  TORCH_CHECK(
      x.dim() == 2 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) && x.device().is_cpu(),
      "quantize_rows: x must be a float32 or bfloat16 CPU tensor of shape (T, K), got ", x.scalar_type(), " ",
      x.sizes());
  const int64_t T = x.size(0), K = x.size(1);
  check_smooth("quantize_rows", smooth, K, "K");
  auto xc = x.contiguous();
  auto q = at::empty({T, K}, x.options().dtype(at::kChar));
  auto scale = at::empty({T}, x.options().dtype(at::kFloat));
  if (K == 0) {
    scale.fill_(1.0);
  } else if (T > 0) {
    at::Tensor sc = smooth ? smooth->contiguous() : at::Tensor();
    FASTBERT_CPU_DISPATCH(quantize_rows_kernel, xc, smooth ? sc.const_data_ptr<float>() : nullptr, q, scale);
  }
  return {q, scale};
}

at::Tensor dequantize_rows_cpu(const at::Tensor& acc, const at::Tensor& x_scale, const at::Tensor& w_scale,
                               at::ScalarType dtype) {
  check_int32_acc("dequantize_rows", acc);
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kBFloat16,
                    "dequantize_rows: dtype must be float32 or bfloat16, got ", dtype);
  const int64_t T = acc.size(0), N = acc.size(1);
  check_row_scale("dequantize_rows", "x_scale", x_scale, T, "T");
  check_row_scale("dequantize_rows", "w_scale", w_scale, N, "N");
  auto out = at::empty({T, N}, acc.options().dtype(dtype));
  if (out.numel() > 0) {
    FASTBERT_CPU_DISPATCH(dequantize_rows_kernel, acc.contiguous(), x_scale.contiguous(), w_scale.contiguous(), out);
  }
  return out;
}

TORCH_LIBRARY_IMPL(fastbert, CPU, m) {
  m.impl("quantize_rows", &quantize_rows_cpu);
  m.impl("dequantize_rows", &dequantize_rows_cpu);
}
#endif

}  // namespace fastbert::cpu
