// The activations of csrc/activation.h on one at::vec::Vectorized (float or double), shared by the kernels
// that fuse an activation into their row loop: bias_act and dequant_bias_act_quant.
#pragma once
#include <ATen/cpu/vec/vec.h>

#include <cmath>

#include "activation.h"
#include "cpu/erf.h"

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

// act(x) for one vector; `A` is a template argument so each activation gets its own inlined loop (a runtime
// switch per vector kept the compiler from inlining erf's polynomial and cost 3x at bert-base sizes).
template <Activation A, typename V>
inline V apply_activation(const V& x) {
  using S = typename V::value_type;
  const V half(S(0.5)), one(S(1));
  if constexpr (A == Activation::Gelu) {
    return half * x * (one + fast_erf(x * V(S(M_SQRT1_2))));
  } else if constexpr (A == Activation::GeluTanh) {
    const V k(S(0.7978845608028654)), c(S(0.044715));
    return half * x * (one + (k * (x + c * x * x * x)).tanh());
  } else if constexpr (A == Activation::GeluFast) {
    const V k(S(0.7978845608)), c(S(0.044715));
    return half * x * (one + (x * k * (one + c * x * x)).tanh());
  } else if constexpr (A == Activation::QuickGelu) {
    return x / (one + (V(S(-1.702)) * x).exp());
  } else if constexpr (A == Activation::Relu) {
    return at::vec::maximum(x, V(S(0)));
  } else {
    static_assert(A == Activation::Silu);
    return x / (one + x.neg().exp());
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace fastbert::cpu
