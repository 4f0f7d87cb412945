// LayerNorm backward of one row, shared by the bias_residual_layernorm and embeddings backward kernels, and
// the deterministic row reduction of the LayerNorm parameters' gradients.
//
// With xhat = (s - mean) * rstd, y = xhat * w + b and g = dL/dy:
//   grad_s = rstd * (g w - mean_c(g w) - xhat * mean_c(g w xhat))
//   grad_w = sum_rows g xhat,   grad_b = sum_rows g
// Rows are cut into chunks whose size depends only on the row count (never on the thread count); each chunk
// sums its rows' (g xhat, g) into its own partial row, and the partials are added in chunk order: the same
// bits for any number of threads.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu/layernorm.h"
#include "cpu/vec.h"

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

// Rows per chunk of the parameter-gradient reduction: a function of the row count alone (at most 128 chunks).
inline int64_t ln_backward_chunk_rows(int64_t rows) { return std::max<int64_t>(8, (rows + 127) / 128); }

// s: the recomputed row (acc type), g: dL/dy (T), w: LayerNorm weight (T); writes grad_s (T or acc type) and
// adds g * xhat into part_w[H], g into part_b[H] (acc type).
template <typename T, typename Out>
inline void layernorm_backward_row(const acc_t<T>* s, const T* g, const T* w, acc_t<T> mean, acc_t<T> rstd, int64_t H,
                                   Out* grad_s, acc_t<T>* part_w, acc_t<T>* part_b) {
  using A = acc_t<T>;
  using V = AccVec<T>;
  constexpr int64_t W = vec_width<T>();
  const V vmean(mean), vrstd(rstd);
  V sum_a(A(0)), sum_b(A(0));
  for (int64_t c = 0; c < H; c += W) {
    const int64_t n = std::min(W, H - c);
    const V gv = load_acc(g + c, n);                       // masked tail loads are zero filled
    const V xhat = (V::loadu(s + c, n) - vmean) * vrstd;
    const V dxhat = gv * load_acc(w + c, n);
    sum_a = sum_a + dxhat;
    sum_b = at::vec::fmadd(dxhat, xhat, sum_b);
    at::vec::fmadd(gv, xhat, V::loadu(part_w + c, n)).store(part_w + c, n);
    (V::loadu(part_b + c, n) + gv).store(part_b + c, n);
  }
  const V a(hsum(sum_a) / A(H)), b(hsum(sum_b) / A(H));
  for (int64_t c = 0; c < H; c += W) {
    const int64_t n = std::min(W, H - c);
    const V xhat = (V::loadu(s + c, n) - vmean) * vrstd;
    const V dxhat = load_acc(g + c, n) * load_acc(w + c, n);
    const V gs = (dxhat - a - xhat * b) * vrstd;
    if constexpr (std::is_same_v<Out, A>) gs.store(grad_s + c, n);
    else store_acc(grad_s + c, gs, n);
  }
}

// partials: (chunks, 2, H) acc type, [g * xhat | g] per chunk; writes grad_w, grad_b (H,) in T.
template <typename T>
inline void reduce_ln_partials(const acc_t<T>* partials, int64_t chunks, int64_t H, T* grad_w, T* grad_b) {
  using A = acc_t<T>;
  at::parallel_for(0, H, 256, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      A sw = 0, sb = 0;
      for (int64_t k = 0; k < chunks; ++k) {
        sw += partials[(2 * k) * H + c];
        sb += partials[(2 * k + 1) * H + c];
      }
      grad_w[c] = static_cast<T>(sw);
      grad_b[c] = static_cast<T>(sb);
    }
  });
}

// The LayerNorm backward of rows [0, N) of H whose values before normalisation a kernel recomputes: fill(r)
// returns row r's reader (as layernorm_rows' fill, layernorm.h). g: dL/dy (N, H); w: the LayerNorm weight;
// mean, rstd: the forward's statistics. Writes grad_s (N, H) (T or the accumulation type) and grad_w, grad_b.
template <typename T, typename Out, typename Fill>
inline void layernorm_backward_rows(int64_t N, int64_t H, Fill&& fill, const T* g, const T* w, const acc_t<T>* mean,
                                    const acc_t<T>* rstd, Out* grad_s, T* grad_w, T* grad_b) {
  using A = acc_t<T>;
  constexpr int64_t W = vec_width<T>();
  const int64_t R = ln_backward_chunk_rows(N);
  const int64_t chunks = (N + R - 1) / R;
  std::vector<A> partials(static_cast<size_t>(chunks * 2 * H), A(0));
  at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
    std::vector<A> row(H);
    for (int64_t k = k0; k < k1; ++k) {
      A* part = partials.data() + k * 2 * H;
      for (int64_t r = k * R; r < std::min(N, (k + 1) * R); ++r) {
        const auto reader = fill(r);
        for (int64_t c = 0; c < H; c += W) {
          const int64_t n = std::min(W, H - c);
          reader(c, n).store(row.data() + c, n);
        }
        layernorm_backward_row<T>(row.data(), g + r * H, w, mean[r], rstd[r], H, grad_s + r * H, part, part + H);
      }
    }
  });
  reduce_ln_partials<T>(partials.data(), chunks, H, grad_w, grad_b);
}

}  // namespace CPU_CAPABILITY
}  // namespace fastbert::cpu
