// The LayerNorm backward of one row, shared by bias_residual_layernorm_backward and embeddings_backward, and the
// deterministic reduction of the LayerNorm parameters' gradients.
//
// With xhat = (s - mean) * rstd (the forward's fp32 statistics), y = xhat * w + b and g = dL/dy:
//   grad_s = rstd * (g w - mean_c(g w) - xhat * mean_c(g w xhat))      (csrc/cpu/layernorm_backward.h)
//   grad_w = sum_rows g xhat,   grad_b = sum_rows g
// One warp per row, rows in flight per block = ln_backward_warps(H). Each warp keeps three fp32 rows in shared
// memory: xhat of its current row, and its running sums of g * xhat and g over the rows it has done. A lane
// only ever touches its own columns of these (the RowSplit of layernorm.cuh), so no barrier is needed until
// the block's end, where the warps' sums are added in warp order into the block's partial row
// (blocks, 2, H) fp32 in global memory; a second kernel (ln_backward_reduce_kernel) adds the blocks' partials
// in block order. The grid is a function of (N, H) alone: the same bits on every run and every GPU.
#pragma once
#include <type_traits>

#include "cuda/layernorm.cuh"

namespace fastbert::cuda {

constexpr int kLnBwdWarps = 4;           // rows in flight per block when H is small enough
constexpr int kLnBwdThreads = kLnBwdWarps * kWarp;  // ... the row kernels\' largest block
constexpr int kLnBwdMaxBlocks = 512;     // partial rows of the parameter-gradient reduction, at most
constexpr int kLnReduceCols = 32;        // ln_backward_reduce_kernel: columns per block
constexpr int kLnReduceGroups = 8;       // ... and groups of partial rows summed in parallel
constexpr int kLnReduceThreads = kLnReduceCols * kLnReduceGroups;

// Warps per block (1, 2 or 4) for rows of H within smem_limit bytes of shared memory; 0 = H too large.
FB_HOST_DEVICE int ln_backward_warps(int64_t H, int64_t smem_limit) {
  const int64_t per_warp = 3 * H * int64_t(sizeof(float));
  for (int w = kLnBwdWarps; w >= 1; w /= 2)
    if (w * per_warp <= smem_limit) return w;
  return 0;
}

// A warp's three shared rows.
struct LnBwdSmem {
  float* xhat;    // (H,) the current row's xhat
  float* part_w;  // (H,) sum over the warp's rows of g * xhat
  float* part_b;  // (H,) sum over the warp's rows of g
};

FB_DEVICE LnBwdSmem ln_backward_smem_of_warp(int warp, int64_t H) {
  float* base = dynamic_smem<float>() + int64_t(warp) * 3 * H;
  return {base, base + H, base + 2 * H};
}

// Zeroes this lane's columns of the warp's running sums.
template <typename T>
FB_DEVICE void ln_backward_zero(const LnBwdSmem& sm, int64_t H, bool vec) {
  constexpr int n = Vec16<T>::n;
  const int lane = threadIdx.x % kWarp;
  const RowSplit<T> split(H, vec);
  for (int64_t c = int64_t(lane) * n; c < split.vec_end; c += kWarp * n)
#pragma unroll
    for (int k = 0; k < n; ++k) sm.part_w[c + k] = sm.part_b[c + k] = 0.f;
  for (int64_t c = split.vec_end + lane; c < H; c += kWarp) sm.part_w[c] = sm.part_b[c] = 0.f;
}

// One column of the first pass: keeps xhat, adds to the running sums and to this lane's sums of g w, g w xhat.
FB_DEVICE void ln_backward_col(const LnBwdSmem& sm, int64_t c, float xhat, float g, float w, float& sum_a,
                               float& sum_b) {
  sm.xhat[c] = xhat;
  const float dxhat = g * w;
  sum_a += dxhat;
  sum_b += dxhat * xhat;
  sm.part_w[c] += g * xhat;
  sm.part_b[c] += g;
}

// The second pass, after the producer called ln_backward_col for each of this lane's columns of the row:
// grad_s (Out: T, or float for a fp32 workspace) = rstd * (g w - a - xhat b). g, w are read again (cached).
template <typename T, typename Out>
FB_DEVICE void ln_backward_finish(const LnBwdSmem& sm, float sum_a, float sum_b, int64_t H, const T* __restrict__ g,
                                  const T* __restrict__ w, float rstd, Out* __restrict__ grad_s, bool vec) {
  constexpr int n = Vec16<T>::n;
  const int lane = threadIdx.x % kWarp;
  const RowSplit<T> split(H, vec);
  const float a = warp_sum(sum_a) / float(H), b = warp_sum(sum_b) / float(H);
  for (int64_t c = int64_t(lane) * n; c < split.vec_end; c += kWarp * n) {
    const Vec16<T> gv = load16(g + c), wv = load16(w + c);
    if constexpr (std::is_same_v<Out, T>) {
      Vec16<T> o;
#pragma unroll
      for (int k = 0; k < n; ++k)
        o.v[k] = from_float<T>((to_float(gv.v[k]) * to_float(wv.v[k]) - a - sm.xhat[c + k] * b) * rstd);
      store16(grad_s + c, o);
    } else {
#pragma unroll
      for (int k = 0; k < n; ++k)
        grad_s[c + k] = from_float<Out>((to_float(gv.v[k]) * to_float(wv.v[k]) - a - sm.xhat[c + k] * b) * rstd);
    }
  }
  for (int64_t c = split.vec_end + lane; c < H; c += kWarp)
    grad_s[c] = from_float<Out>((to_float(g[c]) * to_float(w[c]) - a - sm.xhat[c] * b) * rstd);
}

// This warp's row of the backward of out = LayerNorm(row) * w + b: recomputes s = row (layernorm.cuh's
// SumRow), then the two passes, grad_s (Out: T, or float for a fp32 workspace) from g = dL/dout.
template <typename T, typename Out>
FB_DEVICE void ln_backward_row(const LnBwdSmem& sm, const SumRow<T>& row, const T* g, const T* w, float mean,
                               float rstd, int64_t H, bool vec, Out* grad_s) {
  constexpr int n = Vec16<T>::n;
  const int lane = threadIdx.x % kWarp;
  const RowSplit<T> split(H, vec);
  float sum_a = 0.f, sum_b = 0.f;
  for (int64_t c = int64_t(lane) * n; c < split.vec_end; c += kWarp * n) {
    const auto s = row.load(c);
    const Vec16<T> gv = load16(g + c), wv = load16(w + c);
#pragma unroll
    for (int k = 0; k < n; ++k)
      ln_backward_col(sm, c + k, (s[k] - mean) * rstd, to_float(gv.v[k]), to_float(wv.v[k]), sum_a, sum_b);
  }
  for (int64_t c = split.vec_end + lane; c < H; c += kWarp)
    ln_backward_col(sm, c, (row.at(c) - mean) * rstd, to_float(g[c]), to_float(w[c]), sum_a, sum_b);
  ln_backward_finish<T, Out>(sm, sum_a, sum_b, H, g, w, rstd, grad_s, vec);
}

// At the block's end (every thread of the block calls it): the warps' running sums, added in warp order, into
// the block's partial rows partials[block] = [sum g xhat | sum g], (blocks, 2, H) fp32.
FB_DEVICE void ln_backward_block_partials(int64_t H, float* __restrict__ partials) {
  __syncthreads();
  const int warps = blockDim.x / kWarp;
  float* out = partials + int64_t(blockIdx.x) * 2 * H;
  for (int64_t c = threadIdx.x; c < H; c += blockDim.x) {
    float sw = 0.f, sb = 0.f;
    for (int w = 0; w < warps; ++w) {
      const LnBwdSmem sm = ln_backward_smem_of_warp(w, H);
      sw += sm.part_w[c];
      sb += sm.part_b[c];
    }
    out[c] = sw;
    out[H + c] = sb;
  }
}

// The body of a row kernel of params p (N rows of H, vec, partials): one warp per row, the grid's warps striding
// over the rows, each calling row_fn(sm, row) (which calls ln_backward_row), then the block's partial rows.
template <typename T, typename P, typename RowFn>
FB_DEVICE void ln_backward_rows(const P& p, RowFn&& row_fn) {
  const int warp = threadIdx.x / kWarp;
  const LnBwdSmem sm = ln_backward_smem_of_warp(warp, p.H);
  ln_backward_zero<T>(sm, p.H, p.vec);
  const int64_t warps_total = int64_t(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t row = int64_t(blockIdx.x) * (blockDim.x / kWarp) + warp; row < p.N; row += warps_total) row_fn(sm, row);
  ln_backward_block_partials(p.H, p.partials);
}

// grad_w, grad_b (H,) = sums of the partial rows (blocks, 2, H) in block order: kLnReduceGroups groups of
// threads sum every kLnReduceGroups-th partial row, then the groups are added in group order.
template <typename T>
__global__ void __launch_bounds__(kLnReduceThreads)
    ln_backward_reduce_kernel(const float* __restrict__ partials, int64_t blocks, int64_t H, T* __restrict__ grad_w,
                              T* __restrict__ grad_b) {
  FB_SHARED(float, red, 2 * kLnReduceThreads);
  const int col = threadIdx.x % kLnReduceCols, grp = threadIdx.x / kLnReduceCols;
  const int64_t c = int64_t(blockIdx.x) * kLnReduceCols + col;
  float sw = 0.f, sb = 0.f;
  if (c < H) {
    for (int64_t k = grp; k < blocks; k += kLnReduceGroups) {
      sw += partials[2 * k * H + c];
      sb += partials[(2 * k + 1) * H + c];
    }
  }
  red[threadIdx.x] = sw;
  red[kLnReduceThreads + threadIdx.x] = sb;
  __syncthreads();
  if (grp == 0 && c < H) {
    float tw = 0.f, tb = 0.f;
    for (int k = 0; k < kLnReduceGroups; ++k) {
      tw += red[k * kLnReduceCols + col];
      tb += red[kLnReduceThreads + k * kLnReduceCols + col];
    }
    grad_w[c] = from_float<T>(tw);
    grad_b[c] = from_float<T>(tb);
  }
}

// The launches (host side, shared by the .cu launchers and tests/cuda_harness). A row kernel (one warp per row,
// rows grid-striding, the warps' three shared rows) for N rows of H within smem_limit bytes of shared memory
// (the caller has checked that ln_backward_warps(H, smem_limit) > 0): at most kLnBwdMaxBlocks blocks, each
// writing one partial row pair, so the caller allocates (grid.x, 2, H) fp32 partials.
template <typename Kernel>
inline Launch<Kernel> ln_backward_rows_launch(Kernel kernel, int64_t N, int64_t H, int64_t smem_limit) {
  const int warps = ln_backward_warps(H, smem_limit);
  const int64_t blocks = ceil_div(N, warps);
  return make_launch(
      kernel, dim3(static_cast<unsigned>(blocks < kLnBwdMaxBlocks ? (blocks > 0 ? blocks : 1) : kLnBwdMaxBlocks)),
      dim3(warps * kWarp), int64_t(warps) * 3 * H * int64_t(sizeof(float)));
}

// ln_backward_reduce_kernel's: kLnReduceCols columns per block.
template <typename T>
inline auto ln_backward_reduce_launch(int64_t H) {
  return make_launch(&ln_backward_reduce_kernel<T>, dim3(static_cast<unsigned>(ceil_div(H, kLnReduceCols))),
                     dim3(kLnReduceThreads));
}

}  // namespace fastbert::cuda
