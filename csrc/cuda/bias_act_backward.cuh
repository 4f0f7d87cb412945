// bias_act_backward kernel: grad_input = grad * act'(x + bias) over rows of C, fp32 arithmetic.
//
// The backward of bias_act (csrc/cuda/bias_act.cuh). Recomputes u = x + bias (the forward saves nothing else)
// and multiplies by the exact derivative of the activation, the formulas of the CPU kernel
// (csrc/cpu/bias_act_backward.cpp): one read of grad and x, one write of grad_input, instead of the unfused
// recompute + activation backward + multiply. grad_input is the gradient of x and of the broadcast bias (its
// row sum is taken in csrc/autograd.cpp). Elementwise, grid-stride, with bias_act's launch config:
// 16 bytes per thread per step when C is a multiple of the vector width and every pointer is 16-byte aligned,
// one element per step otherwise.
#pragma once
#include "cuda/bias_act.cuh"

namespace fastbert::cuda {

// d act(u) / du, as csrc/cpu/bias_act_backward.cpp's activation_derivative.
FB_DEVICE float activation_derivative(float u, Activation act) {
  switch (act) {
    case Activation::Gelu: {  // Phi(u) + u phi(u)
      const float cdf = 0.5f * (1.f + erff(u * 0.70710678118654752f));
      const float pdf = expf(-0.5f * u * u) * 0.3989422804014327f;
      return u * pdf + cdf;
    }
    case Activation::GeluTanh:
    case Activation::GeluFast: {  // 0.5 (1 + t) + 0.5 u (1 - t^2) k (1 + 3 c u^2), t = tanh(k (u + c u^3))
      const float k = act == Activation::GeluTanh ? 0.7978845608028654f : 0.7978845608f, c = 0.044715f;
      const float u2 = u * u;
      const float t = tanhf(k * u * (1.f + c * u2));
      return 0.5f * (1.f + t) + 0.5f * u * (1.f - t * t) * (k * (1.f + 3.f * c * u2));
    }
    case Activation::QuickGelu: {  // s + a u s (1 - s), s = sigmoid(a u)
      const float s = 1.f / (1.f + expf(-1.702f * u));
      return s + 1.702f * u * s * (1.f - s);
    }
    case Activation::Relu:  // 0 at u = 0, as torch's threshold_backward
      return u > 0.f ? 1.f : 0.f;
    case Activation::Silu: {  // s (1 + u (1 - s)), s = sigmoid(u)
      const float s = 1.f / (1.f + expf(-u));
      return s * (1.f + u * (1.f - s));
    }
  }
  return 1.f;
}

template <typename T>
struct BiasActBackwardParams {
  const T* grad;  // (N, C)
  const T* x;     // (N, C)
  const T* bias;  // (C,)
  T* grad_input;  // (N, C)
  int64_t numel, C;
  Activation act;
  bool vec;  // C % (16 / sizeof(T)) == 0 and the four pointers 16-byte aligned
};

template <typename T>
inline BiasActBackwardParams<T> bias_act_backward_params(BiasActBackwardParams<T> p) {
  p.vec = p.C % Vec16<T>::n == 0 && aligned16(p.grad) && aligned16(p.x) && aligned16(p.bias) && aligned16(p.grad_input);
  return p;
}

template <typename T>
__global__ void __launch_bounds__(kBiasActThreads) bias_act_backward_kernel(BiasActBackwardParams<T> p) {
  constexpr int n = Vec16<T>::n;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p.vec) {
    for (int64_t v = first; v < p.numel / n; v += stride) {
      const int64_t e = v * n, c = e % p.C;
      const Vec16<T> gv = load16(p.grad + e), xv = load16(p.x + e), bv = load16(p.bias + c);
      Vec16<T> o;
#pragma unroll
      for (int k = 0; k < n; ++k)
        o.v[k] = from_float<T>(to_float(gv.v[k]) * activation_derivative(to_float(xv.v[k]) + to_float(bv.v[k]), p.act));
      store16(p.grad_input + e, o);
    }
  } else {
    for (int64_t e = first; e < p.numel; e += stride)
      p.grad_input[e] = from_float<T>(to_float(p.grad[e]) *
                                      activation_derivative(to_float(p.x[e]) + to_float(p.bias[e % p.C]), p.act));
  }
}

// bias_act's grid and block.
template <typename T>
inline auto bias_act_backward_launch(const BiasActBackwardParams<T>& p) {
  return bias_act_grid_launch<T>(&bias_act_backward_kernel<T>, p.numel, p.vec);
}

}  // namespace fastbert::cuda
