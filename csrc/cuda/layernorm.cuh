// The LayerNorm row epilogue shared by embeddings and bias_residual_layernorm.
//
// One warp owns one row of H. The producer (the op's kernel) writes the row's fp32 pre-norm values s into the
// warp's slice of shared memory, each lane the elements it will read back (lane-private, so no barrier),
// and returns their partial sum. Then: mean by a warp reduction; the variance as the mean of (s - mean)^2, a
// second pass over shared memory (never E[s^2] - mean^2, which cancels badly at eps = 1e-12); then the
// normalized, scaled, shifted row, stored with 16-byte stores when `vec`.
#pragma once
#include "cuda/common.cuh"

namespace fastbert::cuda {

constexpr int kLnWarps = 4;  // rows per block when H is small enough
constexpr int kLnThreads = kLnWarps * kWarp;

// Rows (warps) per block for rows of H, each row's fp32 values in shared memory; 0 rows = H too large.
FB_HOST_DEVICE int layernorm_rows_per_block(int64_t H) {
  const int64_t bytes = H * int64_t(sizeof(float));
  if (bytes * kLnWarps <= kSmemDefault) return kLnWarps;
  return bytes <= kSmemDefault ? 1 : 0;
}

// The launch of a kernel that ends in layernorm_epilogue, one warp per row of N rows of H (the caller has checked
// layernorm_rows_per_block(H) > 0): grid ceil(N / rows), block rows * 32, shared memory rows * H floats.
template <typename Kernel>
inline Launch<Kernel> layernorm_rows_launch(Kernel kernel, int64_t N, int64_t H) {
  const int rows = layernorm_rows_per_block(H);
  return make_launch(kernel, dim3(static_cast<unsigned>(ceil_div(N, rows))), dim3(rows * kWarp),
                     rows * H * int64_t(sizeof(float)));
}

// Elements of row [0, H) a lane handles: vector chunks [lane*n + 32*n*k, +n) below vec_end, then scalars.
template <typename T>
struct RowSplit {
  int64_t vec_end;  // H rounded down to the vector width when vectorized, else 0
  FB_DEVICE RowSplit(int64_t H, bool vec) : vec_end(vec ? H - H % Vec16<T>::n : 0) {}
};

template <typename T>
FB_DEVICE void layernorm_epilogue(const float* s, float partial_sum, int64_t H, const T* __restrict__ gamma,
                                  const T* __restrict__ beta, T* __restrict__ out_row, float eps, bool vec,
                                  float* mean_out, float* rstd_out) {
  constexpr int n = Vec16<T>::n;
  const int lane = threadIdx.x % kWarp;
  const RowSplit<T> split(H, vec);
  const float mean = warp_sum(partial_sum) / float(H);
  float sq = 0.f;
  for (int64_t c = int64_t(lane) * n; c < split.vec_end; c += kWarp * n)
#pragma unroll
    for (int k = 0; k < n; ++k) {
      const float d = s[c + k] - mean;
      sq += d * d;
    }
  for (int64_t c = split.vec_end + lane; c < H; c += kWarp) {
    const float d = s[c] - mean;
    sq += d * d;
  }
  const float rstd = rsqrtf(warp_sum(sq) / float(H) + eps);
  for (int64_t c = int64_t(lane) * n; c < split.vec_end; c += kWarp * n) {
    const Vec16<T> g = load16(gamma + c), b = load16(beta + c);
    Vec16<T> o;
#pragma unroll
    for (int k = 0; k < n; ++k) o.v[k] = from_float<T>((s[c + k] - mean) * rstd * to_float(g.v[k]) + to_float(b.v[k]));
    store16(out_row + c, o);
  }
  for (int64_t c = split.vec_end + lane; c < H; c += kWarp)
    out_row[c] = from_float<T>((s[c] - mean) * rstd * to_float(gamma[c]) + to_float(beta[c]));
  if (lane == 0) {
    *mean_out = mean;
    *rstd_out = rstd;
  }
}

}  // namespace fastbert::cuda
