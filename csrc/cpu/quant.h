// int8 helpers of the quantized-inference kernels (quantize_rows.cpp, dequant_bias_act_quant.cpp,
// dequant_bias_residual_layernorm.cpp): int32 GEMM outputs dequantized, and a row quantized to int8 with its
// dynamic scale, and with a shift when asymmetric.
//
// The row rule (fastbert.ops.reference's quantize_rows is the specification), v[c] = x[c] * smooth[c]:
//   symmetric:  shift = 0,                             amax = max_c |v[c]|
//   asymmetric: shift = (max_c v[c] + min_c v[c]) / 2, amax = (max_c v[c] - min_c v[c]) / 2
//   scale = max(amax / 127, FLT_MIN)  when amax > 0,  else 1  (an all-zero or constant row; also a NaN amax)
//   q[c]  = round_half_even(clamp((v[c] - shift) * (1 / scale), -127, 127)),   so v[c] ~ q[c] * scale + shift
// The shift centres a one-sided row (a GELU's output) on zero, so its range takes all 255 levels instead of 128.
// A GEMM over shifted rows needs, per output channel n, w_sum[n] = the dequantized weight column's sum:
//   out[t, n] = acc[t, n] * scale[t] * w_scale[n] + shift[t] * w_sum[n].
// The FLT_MIN floor keeps 1 / scale finite for rows of denormals (amax < 1.5e-36, where amax / 127 would be a
// denormal whose reciprocal overflows, or zero under flush-to-zero); a zero row gets scale 1 and q = 0, so its
// dequantized values are exact zeros (a constant asymmetric row: q = 0, its value in shift). -128 is never
// produced. Inputs are assumed finite: an
// inf or NaN in a row leaves that row's q and scale unspecified (but never touches other rows).
//
// Quantizing a row takes two passes: the first computes the row's values (whatever the kernel fuses before the
// quantization), multiplies smooth in, stores them to a per-thread fp32 scratch row and tracks max |.| (or max and
// min); the second rounds the scratch row, which sits in L1 (3072 floats = 12 KiB), into int8. Only the first pass
// touches memory other than the row's output, so the int8 output costs one write of T*K bytes.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/zeros.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "cpu/vec.h"

namespace fastbert::cpu {

// An int8 GEMM's int32 output acc (T, N) and what dequantizes it (x_shift and w_sum both set, or both null).
// Plain pointers, shared by every instruction set's kernels.
struct Dequant {
  const int32_t* acc;
  const float* x_scale;  // (T,)
  const float* w_scale;  // (N,)
  const float* x_shift;  // (T,) or nullptr: the GEMM's input rows were quantized with a shift
  const float* w_sum;    // (N,) or nullptr
  int64_t N;
};

// Where quantized rows of K values go: q (T, K), scale (T,), and shift (T,) for asymmetric rows (else nullptr).
struct QuantOut {
  int8_t* q;
  float* scale;
  float* shift;
  int64_t K;
};

namespace CPU_CAPABILITY {

using FVec = at::vec::Vectorized<float>;
constexpr int64_t kFW = FVec::size();

inline float row_scale(float amax) { return amax > 0.f ? std::max(amax / 127.f, FLT_MIN) : 1.f; }

// n floats at p, lanes past n zero.
inline FVec loadf(const float* p, int64_t n = kFW) { return n == kFW ? FVec::loadu(p) : FVec::loadu(p, n); }

// n int32 values at p converted to float (round to nearest even past 2^24), lanes past n zero.
inline FVec load_int32_as_float(const int32_t* p, int64_t n = kFW) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512i i =
      n == 16 ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi32(static_cast<__mmask16>((1u << n) - 1), p);
  return FVec(_mm512_cvtepi32_ps(i));
#elif defined(CPU_CAPABILITY_AVX2)
  if (n == 8) return FVec(_mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
  alignas(32) int32_t buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::memcpy(buf, p, n * sizeof(int32_t));
  return FVec(_mm256_cvtepi32_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(buf))));
#else
  alignas(64) float buf[kFW];
  for (int64_t i = 0; i < kFW; ++i) buf[i] = i < n ? static_cast<float>(p[i]) : 0.f;
  return FVec::loadu(buf);
#endif
}

// v rounded to T and back (the value a store_acc of v to a T row holds), so a quantization of the row can
// use exactly the values written.
template <typename T>
inline FVec round_to(const FVec& v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
    return widen<T>(narrow<T>(v));
#else
    alignas(64) float buf[kFW];
    v.store(buf);
    for (int64_t i = 0; i < kFW; ++i) buf[i] = static_cast<float>(static_cast<T>(buf[i]));
    return FVec::loadu(buf);
#endif
  }
}

// q[0, n) = the int8 of v's first n lanes, rounded to nearest even; v must already lie in [-127, 127].
inline void store_int8(int8_t* q, const FVec& v, int64_t n = kFW) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512i i = _mm512_cvtps_epi32(v);  // round to nearest even under the default MXCSR
  if (n == 16) _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtsepi32_epi8(i));
  else _mm512_mask_cvtsepi32_storeu_epi8(q, static_cast<__mmask16>((1u << n) - 1), i);
#elif defined(CPU_CAPABILITY_AVX2)
  const __m256i i = _mm256_cvtps_epi32(v);  // round to nearest even under the default MXCSR
  const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));  // 8 int16
  const __m128i b = _mm_packs_epi16(w, w);  // 8 int8 in the low 64 bits
  if (n == 8) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q), b);
  } else {
    alignas(16) int8_t buf[16];
    _mm_store_si128(reinterpret_cast<__m128i*>(buf), b);
    std::memcpy(q, buf, n);
  }
#else
  alignas(64) float buf[kFW];
  v.store(buf);
  for (int64_t i = 0; i < n; ++i) q[i] = static_cast<int8_t>(std::nearbyint(buf[i]));
#endif
}

// A per-thread fp32 scratch row of n floats starting on a cache line (a vector store that straddles two lines
// costs two).
struct ScratchRow {
  std::vector<float> buf;
  float* p;
  explicit ScratchRow(int64_t n) : buf(n + 16) {
    p = buf.data() + (16 - reinterpret_cast<uintptr_t>(buf.data()) / sizeof(float) % 16) % 16;
  }
};

// Row r, columns [c, c + n) of a Dequant: acc * x_scale[r] * w_scale (+ x_shift[r] * w_sum), in that order, fp32.
C10_ALWAYS_INLINE FVec dequant(const Dequant& d, int64_t r, int64_t c, int64_t n = kFW) {
  FVec v = load_int32_as_float(d.acc + r * d.N + c, n) * FVec(d.x_scale[r]) * loadf(d.w_scale + c, n);
  if (d.x_shift) v = v + FVec(d.x_shift[r]) * loadf(d.w_sum + c, n);
  return v;
}

// Quantizes row r: value(c, n) returns the row's fp32 values at columns [c, c + n) (n <= kFW; called once per
// chunk, in column order, so it may also store them elsewhere), smooth (K,) or nullptr. Writes the row's q,
// scale and shift by the rule at the top of this file; s is a K-float scratch row (it may be the buffer value()
// reads from: column c is written only after value(c, .) returned).
template <typename Value>
C10_ALWAYS_INLINE void quantize_row(Value value, const float* smooth, float* s, const QuantOut& out, int64_t r) {
  const int64_t K = out.K;
  const bool asym = out.shift != nullptr;
  FVec hi_v(asym ? -FLT_MAX : 0.f), lo_v(FLT_MAX);  // symmetric: hi_v tracks max |v|
  int64_t c = 0;
  for (; c < K; c += kFW) {
    const int64_t n = std::min<int64_t>(kFW, K - c);
    FVec v = value(c, n);
    if (smooth) v = v * loadf(smooth + c, n);
    v.store(s + c, n);
    if (asym) {
      hi_v = at::vec::maximum(hi_v, n == kFW ? v : FVec::set(FVec(-FLT_MAX), v, n));
      lo_v = at::vec::minimum(lo_v, n == kFW ? v : FVec::set(FVec(FLT_MAX), v, n));
    } else {
      hi_v = at::vec::maximum(hi_v, n == kFW ? v.abs() : FVec::set(FVec(0.f), v.abs(), n));
    }
  }
  const float hi = at::vec::vec_reduce_all<float>([](FVec& a, FVec& b) { return at::vec::maximum(a, b); }, hi_v);
  float centre = 0.f, amax = hi;
  if (asym) {
    const float lo = at::vec::vec_reduce_all<float>([](FVec& a, FVec& b) { return at::vec::minimum(a, b); }, lo_v);
    centre = K > 0 ? (hi + lo) * 0.5f : 0.f;
    amax = K > 0 ? (hi - lo) * 0.5f : 0.f;
    out.shift[r] = centre;
  }
  const float sc = row_scale(amax);
  out.scale[r] = sc;
  int8_t* q = out.q + r * K;
  const FVec inv(1.f / sc), sh(centre), qlo(-127.f), qhi(127.f);
  for (c = 0; c + kFW <= K; c += kFW) store_int8(q + c, at::vec::clamp((FVec::loadu(s + c) - sh) * inv, qlo, qhi));
  if (c < K) store_int8(q + c, at::vec::clamp((FVec::loadu(s + c, K - c) - sh) * inv, qlo, qhi), K - c);
}

// Row grain of at::parallel_for for rows of K elements: about 32K elements per task.
inline int64_t row_grain(int64_t K) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(K, 1)); }

}  // namespace CPU_CAPABILITY

#ifdef CPU_CAPABILITY_DEFAULT
// Argument checks shared by the int8 ops (compiled once, in the DEFAULT object).
inline void check_row_scale(const char* op, const char* name, const at::Tensor& t, int64_t len, const char* dim) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == len && t.scalar_type() == at::kFloat && t.device().is_cpu(), op, ": ", name,
              " must be a float32 CPU tensor of shape (", dim, ",) = (", len, ",), got ", t.scalar_type(), " ",
              t.sizes());
}

inline void check_int32_acc(const char* op, const at::Tensor& acc) {
  TORCH_CHECK(acc.dim() == 2 && acc.scalar_type() == at::kInt && acc.device().is_cpu(), op,
              ": acc must be an int32 CPU tensor of shape (T, N) (a torch._int_mm output), got ", acc.scalar_type(),
              " ", acc.sizes());
}

inline void check_smooth(const char* op, const std::optional<at::Tensor>& smooth, int64_t K, const char* dim) {
  if (smooth) check_row_scale(op, "smooth", *smooth, K, dim);
}

// x_shift (T,) and w_sum (N,): both given (the GEMM's input rows were quantized with a shift) or neither.
inline void check_shift(const char* op, const std::optional<at::Tensor>& x_shift,
                        const std::optional<at::Tensor>& w_sum, int64_t T, int64_t N) {
  TORCH_CHECK_VALUE(x_shift.has_value() == w_sum.has_value(), op,
                    ": x_shift and w_sum go together (a shifted input needs its weight's column sums); got ",
                    x_shift ? "x_shift without w_sum" : "w_sum without x_shift");
  if (x_shift) {
    check_row_scale(op, "x_shift", *x_shift, T, "T");
    check_row_scale(op, "w_sum", *w_sum, N, "N");
  }
}

// The shift output: (T,) float32 for asymmetric rows (zeros until the kernel writes it), else empty (0,).
inline at::Tensor shift_output(const at::Tensor& like, int64_t T, bool asymmetric) {
  return at::zeros({asymmetric ? T : 0}, like.options().dtype(at::kFloat));
}

// Raw pointers of an optional float32 tensor made contiguous (keep holds it alive), or nullptr.
inline const float* optional_ptr(const std::optional<at::Tensor>& t, at::Tensor& keep) {
  if (!t) return nullptr;
  keep = t->contiguous();
  return keep.const_data_ptr<float>();
}
#endif

}  // namespace fastbert::cpu
