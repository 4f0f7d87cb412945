// bias_residual_layernorm_backward kernel: the gradients of out = LayerNorm(x + bias + residual).
//
// Fuses the recompute of s = x + bias + residual (never saved by the forward: one (N, H) tensor less kept
// alive per LayerNorm), the LayerNorm backward with the forward's fp32 (mean, rstd), and the first stage of
// the LayerNorm parameters' gradient reduction: per row one read of grad_out, x, residual and one write of
// grad_s, all arithmetic in fp32 (layernorm_backward.cuh has the formula and the deterministic two-stage
// reduction of grad_ln_weight, grad_ln_bias). grad_s is the gradient of x and of residual; the bias's is its
// row sum (csrc/autograd.cpp). One warp per row, warps grid-striding over the rows.
#pragma once
#include "cuda/layernorm_backward.cuh"

namespace fastbert::cuda {

template <typename T>
struct BrlnBackwardParams {
  const T* grad_out;  // (N, H)
  const T* x;         // (N, H)
  const T* bias;      // (H,) or nullptr
  const T* residual;  // (N, H)
  const T* gamma;     // (H,)
  const float* mean;  // (N,)
  const float* rstd;  // (N,)
  T* grad_s;          // (N, H)
  float* partials;    // (gridDim.x, 2, H)
  int64_t N, H;
  bool vec;  // H % (16 / sizeof(T)) == 0 and every (N, H) / (H,) pointer 16-byte aligned
};

template <typename T>
__global__ void __launch_bounds__(kLnBwdWarps * kWarp) brln_backward_kernel(BrlnBackwardParams<T> p) {
  constexpr int n = Vec16<T>::n;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const LnBwdSmem sm = ln_backward_smem_of_warp(warp, p.H);
  const RowSplit<T> split(p.H, p.vec);
  ln_backward_zero<T>(sm, p.H, p.vec);
  const int64_t warps_total = int64_t(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t row = int64_t(blockIdx.x) * (blockDim.x / kWarp) + warp; row < p.N; row += warps_total) {
    const T* x = p.x + row * p.H;
    const T* r = p.residual + row * p.H;
    const T* g = p.grad_out + row * p.H;
    const float mean = p.mean[row], rstd = p.rstd[row];
    float sum_a = 0.f, sum_b = 0.f;
    for (int64_t c = int64_t(lane) * n; c < split.vec_end; c += kWarp * n) {
      const Vec16<T> xv = load16(x + c), rv = load16(r + c), gv = load16(g + c), wv = load16(p.gamma + c);
      Vec16<T> bv;
      if (p.bias) bv = load16(p.bias + c);
#pragma unroll
      for (int k = 0; k < n; ++k) {
        const float s = to_float(xv.v[k]) + to_float(rv.v[k]) + (p.bias ? to_float(bv.v[k]) : 0.f);
        ln_backward_col(sm, c + k, (s - mean) * rstd, to_float(gv.v[k]), to_float(wv.v[k]), sum_a, sum_b);
      }
    }
    for (int64_t c = split.vec_end + lane; c < p.H; c += kWarp) {
      const float s = to_float(x[c]) + to_float(r[c]) + (p.bias ? to_float(p.bias[c]) : 0.f);
      ln_backward_col(sm, c, (s - mean) * rstd, to_float(g[c]), to_float(p.gamma[c]), sum_a, sum_b);
    }
    ln_backward_finish<T, T>(sm, sum_a, sum_b, p.H, g, p.gamma, rstd, p.grad_s + row * p.H, p.vec);
  }
  ln_backward_block_partials(p.H, p.partials);
}

// The launch (host side, shared by csrc/cuda/bias_residual_layernorm_backward.cu and tests/cuda_harness); then
// ln_backward_reduce_kernel over the grid's partials.
template <typename T>
inline BrlnBackwardParams<T> brln_backward_params(BrlnBackwardParams<T> p) {
  p.vec = p.H % Vec16<T>::n == 0 && aligned16(p.grad_out) && aligned16(p.x) && (!p.bias || aligned16(p.bias)) &&
          aligned16(p.residual) && aligned16(p.gamma) && aligned16(p.grad_s);
  return p;
}

template <typename T>
inline auto brln_backward_launch(int64_t N, int64_t H, int64_t smem_limit) {
  return ln_backward_rows_launch(&brln_backward_kernel<T>, N, H, smem_limit);
}

}  // namespace fastbert::cuda
