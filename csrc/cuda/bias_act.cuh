// bias_act kernel: out = act(x + bias) over rows of C, fp32 arithmetic.
//
// Fuses the FFN's first GEMM bias with its activation: x read once, out written once (the unfused version
// reads and writes the (N, I) tensor twice). Elementwise, grid-stride, 16 bytes per thread per step when
// C is a multiple of the vector width and the pointers are 16-byte aligned, one element per step otherwise.
#pragma once
#include "activation.h"
#include "cuda/common.cuh"

namespace fastbert::cuda {

constexpr int kBiasActThreads = 256;

FB_DEVICE float apply_activation(float x, Activation act) {
  switch (act) {
    case Activation::Gelu: return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    case Activation::GeluTanh: return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    case Activation::GeluFast: return 0.5f * x * (1.f + tanhf(x * 0.7978845608f * (1.f + 0.044715f * x * x)));
    case Activation::QuickGelu: return x / (1.f + expf(-1.702f * x));
    case Activation::Relu: return x < 0.f ? 0.f : x;
    case Activation::Silu: return x / (1.f + expf(-x));
  }
  return x;
}

template <typename T>
struct BiasActParams {
  const T* x;     // (N, C)
  const T* bias;  // (C,)
  T* out;         // (N, C)
  int64_t numel, C;
  Activation act;
  bool vec;  // C % (16 / sizeof(T)) == 0 and the three pointers 16-byte aligned
};

template <typename T>
__global__ void __launch_bounds__(kBiasActThreads) bias_act_kernel(BiasActParams<T> p) {
  constexpr int n = Vec16<T>::n;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p.vec) {
    for (int64_t v = first; v < p.numel / n; v += stride) {
      const int64_t e = v * n, c = e % p.C;
      const Vec16<T> xv = load16(p.x + e), bv = load16(p.bias + c);
      Vec16<T> o;
#pragma unroll
      for (int k = 0; k < n; ++k)
        o.v[k] = from_float<T>(apply_activation(to_float(xv.v[k]) + to_float(bv.v[k]), p.act));
      store16(p.out + e, o);
    }
  } else {
    for (int64_t e = first; e < p.numel; e += stride)
      p.out[e] = from_float<T>(apply_activation(to_float(p.x[e]) + to_float(p.bias[e % p.C]), p.act));
  }
}

// The launch (host side, shared by csrc/cuda/bias_act.cu and tests/cuda_harness): the caller's pointers and
// sizes, plus whether the 16-byte path applies; the grid.
template <typename T>
inline BiasActParams<T> bias_act_params(BiasActParams<T> p) {
  p.vec = p.C % Vec16<T>::n == 0 && aligned16(p.x) && aligned16(p.bias) && aligned16(p.out);
  return p;
}

// Grid-stride over numel elements (numel / n vectors of n when vec), at most 8192 blocks; bias_act_backward too.
template <typename T, typename Kernel>
inline Launch<Kernel> bias_act_grid_launch(Kernel kernel, int64_t numel, bool vec) {
  const int64_t work = vec ? numel / Vec16<T>::n : numel;
  const int64_t blocks = ceil_div(work, kBiasActThreads);
  return make_launch(kernel, dim3(static_cast<unsigned>(blocks < 8192 ? (blocks > 0 ? blocks : 1) : 8192)),
                     dim3(kBiasActThreads));
}

template <typename T>
inline auto bias_act_launch(const BiasActParams<T>& p) {
  return bias_act_grid_launch<T>(&bias_act_kernel<T>, p.numel, p.vec);
}

}  // namespace fastbert::cuda
