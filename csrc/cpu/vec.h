// Vectorized load/store of float, double, bfloat16 and half rows in their accumulation type (float for
// 16-bit storage, else the type itself), over at::vec::Vectorized of the instruction set being compiled.
//
// 16-bit storage converts in registers (AVX-512: 16 values per load, masked tails; AVX2: 8 values, tails
// through a small buffer), so a bf16 row moves half the bytes of a float row for the same instructions.
// float -> bf16 rounds to nearest even and keeps NaN (at::vec's cvtfp32_bf16, the same bits as c10::BFloat16).
#pragma once
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstring>
#include <type_traits>

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

template <typename T> struct AccType { using type = T; };
template <> struct AccType<c10::BFloat16> { using type = float; };
template <> struct AccType<c10::Half> { using type = float; };
template <typename T> using acc_t = typename AccType<T>::type;

template <typename T> using AccVec = at::vec::Vectorized<acc_t<T>>;

// Elements of T handled per AccVec.
template <typename T> constexpr int64_t vec_width() { return AccVec<T>::size(); }

template <typename T>
constexpr bool is_16bit_float = std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>;

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// A vector of bf16/half values (16 in a ymm for AVX-512, 8 in an xmm for AVX2) <-> as many floats in a vector.
#if defined(CPU_CAPABILITY_AVX512)
using Raw16 = __m256i;
using RawF32 = __m512;
#else
using Raw16 = __m128i;
using RawF32 = __m256;
#endif
template <typename T>
inline at::vec::Vectorized<float> widen(Raw16 raw) {
  RawF32 out;
  if constexpr (std::is_same_v<T, c10::BFloat16>) at::vec::cvtbf16_fp32(raw, out);
  else at::vec::cvtfp16_fp32(raw, out);
  return out;
}
template <typename T>
inline Raw16 narrow(const at::vec::Vectorized<float>& v) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) return at::vec::cvtfp32_bf16(RawF32(v));
  else return at::vec::cvtfp32_fp16(RawF32(v));
}
#endif

template <typename T>
inline AccVec<T> load_acc(const T* p, int64_t n = vec_width<T>()) {
  if constexpr (std::is_same_v<T, acc_t<T>>) {
    return n == vec_width<T>() ? AccVec<T>::loadu(p) : AccVec<T>::loadu(p, n);
  } else {
    static_assert(is_16bit_float<T>);
#if defined(CPU_CAPABILITY_AVX512)
    const __m256i raw = n == 16 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                                : _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), p);
    return widen<T>(raw);
#elif defined(CPU_CAPABILITY_AVX2)
    if (n == 8) return widen<T>(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    alignas(16) uint16_t buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::memcpy(buf, p, n * sizeof(T));
    return widen<T>(_mm_load_si128(reinterpret_cast<const __m128i*>(buf)));
#else
    alignas(64) float buf[vec_width<T>()];
    at::vec::convert(p, buf, n);
    return AccVec<T>::loadu(buf, n);
#endif
  }
}

template <typename T>
inline void store_acc(T* p, const AccVec<T>& v, int64_t n = vec_width<T>()) {
  if constexpr (std::is_same_v<T, acc_t<T>>) {
    if (n == vec_width<T>()) v.store(p);
    else v.store(p, n);
  } else {
    static_assert(is_16bit_float<T>);
#if defined(CPU_CAPABILITY_AVX512)
    const __m256i raw = narrow<T>(v);
    if (n == 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), raw);
    else _mm256_mask_storeu_epi16(p, static_cast<__mmask16>((1u << n) - 1), raw);
#elif defined(CPU_CAPABILITY_AVX2)
    const __m128i raw = narrow<T>(v);
    if (n == 8) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), raw);
    } else {
      alignas(16) uint16_t buf[8];
      _mm_store_si128(reinterpret_cast<__m128i*>(buf), raw);
      std::memcpy(p, buf, n * sizeof(T));
    }
#else
    alignas(64) float buf[vec_width<T>()];
    v.store(buf, n);
    at::vec::convert(buf, p, n);
#endif
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace fastbert::cpu
