// The LayerNorm row shared by embeddings and bias_residual_layernorm: out = LayerNorm(a + b [+ c]).
//
// One warp owns one row of H. stage_row writes the row's fp32 pre-norm values s = a + b (+ c) into the warp's
// slice of shared memory, each lane the elements it will read back (lane-private, so no barrier), and returns
// their partial sum. Then layernorm_epilogue: mean by a warp reduction; the variance as the mean of (s - mean)^2, a
// second pass over shared memory (never E[s^2] - mean^2, which cancels badly at eps = 1e-12); then the normalized,
// scaled, shifted row, stored with 16-byte stores when `vec`.
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

// The launch of a kernel of stage_row + layernorm_epilogue, one warp per row of N rows of H (the caller has checked
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

// The pre-norm row of both LayerNorm ops and their backward: s = a + b (+ c), fp32 sums in that order; a and b
// rows of H, c a row of H or nullptr. bias_residual_layernorm: x, residual, bias; embeddings: the word,
// position and token type rows.
template <typename T>
struct SumRow {
  const T* a;
  const T* b;
  const T* c;
  // The n = Vec16<T>::n elements from column col: their vectors (16-byte loads), then chunk[k] their sums.
  struct Chunk {
    Vec16<T> a, b, c;
    bool has_c;
    FB_DEVICE float operator[](int k) const {
      return to_float(a.v[k]) + to_float(b.v[k]) + (has_c ? to_float(c.v[k]) : 0.f);
    }
  };
  FB_DEVICE Chunk load(int64_t col) const {
    Chunk v;
    v.a = load16(a + col);
    v.b = load16(b + col);
    v.has_c = c != nullptr;
    if (c) v.c = load16(c + col);
    return v;
  }
  FB_DEVICE float at(int64_t col) const { return to_float(a[col]) + to_float(b[col]) + (c ? to_float(c[col]) : 0.f); }
};

// Writes this lane's elements of row into the warp's shared row s (lane-private: no barrier); returns their sum.
template <typename T>
FB_DEVICE float stage_row(const SumRow<T>& row, int64_t H, bool vec, float* s) {
  constexpr int n = Vec16<T>::n;
  const int lane = threadIdx.x % kWarp;
  const RowSplit<T> split(H, vec);
  float sum = 0.f;
  for (int64_t c = int64_t(lane) * n; c < split.vec_end; c += kWarp * n) {
    const auto v = row.load(c);
#pragma unroll
    for (int k = 0; k < n; ++k) {
      s[c + k] = v[k];
      sum += v[k];
    }
  }
  for (int64_t c = split.vec_end + lane; c < H; c += kWarp) {
    const float v = row.at(c);
    s[c] = v;
    sum += v;
  }
  return sum;
}

// The statistics and the normalised row from the staged s and its lane's partial sum.
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
