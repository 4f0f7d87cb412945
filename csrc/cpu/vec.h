// Vectorized load/store of float, double, bfloat16 and half rows in their accumulation type (float for
// 16-bit storage, else the type itself), over at::vec::Vectorized of the instruction set being compiled.
#pragma once
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
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
inline AccVec<T> load_acc(const T* p, int64_t n = vec_width<T>()) {
  if constexpr (std::is_same_v<T, acc_t<T>>) {
    return n == vec_width<T>() ? AccVec<T>::loadu(p) : AccVec<T>::loadu(p, n);
  } else {
    alignas(64) float buf[vec_width<T>()];
    at::vec::convert(p, buf, n);
    return AccVec<T>::loadu(buf, n);
  }
}

template <typename T>
inline void store_acc(T* p, const AccVec<T>& v, int64_t n = vec_width<T>()) {
  if constexpr (std::is_same_v<T, acc_t<T>>) {
    if (n == vec_width<T>()) v.store(p); else v.store(p, n);
  } else {
    alignas(64) float buf[vec_width<T>()];
    v.store(buf, n);
    at::vec::convert(buf, p, n);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace fastbert::cpu
