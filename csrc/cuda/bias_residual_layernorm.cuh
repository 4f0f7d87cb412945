// bias_residual_layernorm kernel: out = LayerNorm(x + bias + residual), per row of H, fp32 statistics.
//
// Fuses the attention-output / FFN-output GEMM's bias, the residual add and the LayerNorm: x and residual are
// read once, out written once (3 H-vectors of traffic per row instead of the unfused 7). One warp per row,
// kLnWarps rows per block; the row's fp32 sum lives in shared memory between the passes (layernorm.cuh).
#pragma once
#include "cuda/layernorm.cuh"

namespace fastbert::cuda {

template <typename T>
struct BiasResidualLayerNormParams {
  const T* x;         // (N, H)
  const T* bias;      // (H,) or nullptr
  const T* residual;  // (N, H)
  const T* gamma;     // (H,)
  const T* beta;      // (H,)
  T* out;             // (N, H)
  float* mean;        // (N,)
  float* rstd;        // (N,)
  int64_t N, H;
  float eps;
  bool vec;  // H % (16 / sizeof(T)) == 0 and every pointer 16-byte aligned
};

template <typename T>
__global__ void __launch_bounds__(kLnThreads) bias_residual_layernorm_kernel(BiasResidualLayerNormParams<T> p) {
  const int warp = threadIdx.x / kWarp;
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / kWarp) + warp;
  if (row >= p.N) return;  // whole warps only; no block barrier below
  float* s = dynamic_smem<float>() + int64_t(warp) * p.H;
  const float sum = stage_row(SumRow<T>{p.x + row * p.H, p.residual + row * p.H, p.bias}, p.H, p.vec, s);
  layernorm_epilogue(s, sum, p.H, p.gamma, p.beta, p.out + row * p.H, p.eps, p.vec, p.mean + row, p.rstd + row);
}

// The launch (host side, shared by csrc/cuda/bias_residual_layernorm.cu and tests/cuda_harness).
template <typename T>
inline BiasResidualLayerNormParams<T> bias_residual_layernorm_params(BiasResidualLayerNormParams<T> p) {
  p.vec = p.H % Vec16<T>::n == 0 && aligned16(p.x) && (!p.bias || aligned16(p.bias)) && aligned16(p.residual) &&
          aligned16(p.gamma) && aligned16(p.beta) && aligned16(p.out);
  return p;
}

template <typename T>
inline auto bias_residual_layernorm_launch(const BiasResidualLayerNormParams<T>& p) {
  return layernorm_rows_launch(&bias_residual_layernorm_kernel<T>, p.N, p.H);
}

}  // namespace fastbert::cuda
