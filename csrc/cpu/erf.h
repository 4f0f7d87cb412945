// erf for float vectors without exp or a library call: the erf GELU's inner function.
//
// Why: bias + GELU is the widest elementwise op in BERT ((T, 4H) after the FFN's first GEMM). With
// Vectorized<float>::erf (a Sleef exp call and a division per vector) it ran compute-bound at about half the
// machine's copy speed. This is a rational minimax fit, erf(x) ~ x P(x^2) / Q(x^2) on |x| <= 4 (P degree 6, Q
// degree 4, fitted in float64 by iteratively reweighted least squares: tools/fit_erf.py prints them), with |x|
// clamped to 4, where erf rounds to +-1 in float32. Cost per vector: 10 FMAs, one division and 6 other ops.
//
// Accuracy in float32 against float64 erf (tests/ops/test_activation.py checks it on a dense grid): max abs
// error 3.5e-7 for erf; for GELU(x) = 0.5 x (1 + erf(x / sqrt 2)) on [-8, 8], 1.3e-6, where PyTorch's own
// float32 F.gelu is off by up to 1.2e-6. Double keeps Vectorized<double>::erf.
#pragma once
#include <ATen/cpu/vec/vec.h>

#include <type_traits>

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

inline at::vec::Vectorized<float> erf_rational(const at::vec::Vectorized<float>& x) {
  using V = at::vec::Vectorized<float>;
  const V xc = at::vec::clamp(x, V(-4.0f), V(4.0f));
  const V t = xc * xc;
  V p(1.9217174e-08f);
  p = at::vec::fmadd(p, t, V(-1.9903102e-06f));
  p = at::vec::fmadd(p, t, V(1.5553496e-04f));
  p = at::vec::fmadd(p, t, V(4.2929854e-03f));
  p = at::vec::fmadd(p, t, V(5.2433267e-02f));
  p = at::vec::fmadd(p, t, V(2.1394318e-01f));
  p = at::vec::fmadd(p, t, V(1.1283786e+00f));
  V q(1.0980208e-03f);
  q = at::vec::fmadd(q, t, V(1.5550958e-02f));
  q = at::vec::fmadd(q, t, V(1.2079899e-01f));
  q = at::vec::fmadd(q, t, V(5.2292985e-01f));
  q = at::vec::fmadd(q, t, V(1.0000000e+00f));
  // |x P / Q| can round a hair above 1 near the clamp: keep erf in [-1, 1]
  return at::vec::clamp(xc * p / q, V(-1.0f), V(1.0f));
}

// erf(x) for the accumulation type of a row: the rational fit for float, the library's erf otherwise.
template <typename V>
inline V fast_erf(const V& x) {
  if constexpr (std::is_same_v<typename V::value_type, float>) {
    return erf_rational(x);
  } else {
    return x.erf();
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace fastbert::cpu
