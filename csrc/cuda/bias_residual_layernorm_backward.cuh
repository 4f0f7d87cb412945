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
__global__ void __launch_bounds__(kLnBwdThreads) brln_backward_kernel(BrlnBackwardParams<T> p) {
  ln_backward_rows<T>(p, [&](const LnBwdSmem& sm, int64_t row) {
    ln_backward_row(sm, SumRow<T>{p.x + row * p.H, p.residual + row * p.H, p.bias}, p.grad_out + row * p.H, p.gamma,
                    p.mean[row], p.rstd[row], p.H, p.vec, p.grad_s + row * p.H);
  });
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
