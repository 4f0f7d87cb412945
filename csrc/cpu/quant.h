// int8 helpers of the quantized-inference kernels (quantize_rows.cpp, dequant_bias_act_quant.cpp,
// dequant_bias_residual_layernorm.cpp): int32 GEMM outputs loaded as floats, and a row quantized to int8 with
// its dynamic symmetric scale.
//
// The row scale rule (fastbert.ops.reference's _row_scale is the specification):
//   amax  = max_c |x[c] * smooth[c]|
//   scale = max(amax / 127, FLT_MIN)  when amax > 0,  else 1  (an all-zero row; also a NaN amax)
//   q[c]  = round_half_even(clamp(x[c] * smooth[c] * (1 / scale), -127, 127))
// The FLT_MIN floor keeps 1 / scale finite for rows of denormals (amax < 1.5e-36, where amax / 127 would be a
// denormal whose reciprocal overflows, or zero under flush-to-zero); a zero row gets scale 1 and q = 0, so its
// dequantized values are exact zeros. -128 is never produced (symmetric range). Inputs are assumed finite: an
// inf or NaN in a row leaves that row's q and scale unspecified (but never touches other rows).
//
// Quantizing a row takes two passes: the first computes the row's values (whatever the kernel fuses before the
// quantization), multiplies smooth in, stores them to a per-thread fp32 scratch row and tracks max |.|; the
// second rounds the scratch row, which sits in L1 (3072 floats = 12 KiB), into int8. Only the first pass
// touches memory other than the row's output, so the int8 output costs one write of T*K bytes.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
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

// Quantizes one row of K values: value(c, n) returns the row's fp32 values at columns [c, c + n) (n <= kFW;
// called once per chunk, in column order, so it may also store them elsewhere), smooth (K,) or nullptr.
// Writes q[0, K) and *scale by the rule at the top of this file; s is a K-float scratch row (it may be the
// buffer value() reads from: column c is written only after value(c, .) returned).
template <typename Value>
C10_ALWAYS_INLINE void quantize_row(Value value, int64_t K, const float* smooth, float* s, int8_t* q, float* scale) {
  FVec m(0.f);
  int64_t c = 0;
  for (; c + kFW <= K; c += kFW) {
    FVec v = value(c, kFW);
    if (smooth) v = v * FVec::loadu(smooth + c);
    v.store(s + c);
    m = at::vec::maximum(m, v.abs());
  }
  if (c < K) {
    const int64_t n = K - c;
    FVec v = value(c, n);
    if (smooth) v = v * FVec::loadu(smooth + c, n);
    v.store(s + c, n);
    m = at::vec::maximum(m, FVec::set(FVec(0.f), v.abs(), n));
  }
  const float amax = at::vec::vec_reduce_all<float>([](FVec& a, FVec& b) { return at::vec::maximum(a, b); }, m);
  const float sc = row_scale(amax);
  *scale = sc;
  const FVec inv(1.f / sc), lo(-127.f), hi(127.f);
  for (c = 0; c + kFW <= K; c += kFW) store_int8(q + c, at::vec::clamp(FVec::loadu(s + c) * inv, lo, hi));
  if (c < K) store_int8(q + c, at::vec::clamp(FVec::loadu(s + c, K - c) * inv, lo, hi), K - c);
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
#endif

}  // namespace fastbert::cpu
