// LayerNorm of rows a kernel computes into a scratch row of the accumulation type, shared by the embeddings
// and bias_residual_layernorm kernels. Statistics in two passes: the sum as the kernel writes the row, then the
// centred sums (stable for eps = 1e-12 on BERT's outlier dimensions, where E[x^2] - E[x]^2 can go negative); a
// third pass writes the normalised row. The scratch row sits in L1, so the passes cost instructions and loads,
// not memory traffic: reductions keep four accumulators, and rows go in pairs that share the loads of weight
// and bias.
#pragma once
#include <ATen/cpu/vec/functional.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/vec.h"

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

template <typename V>
inline typename V::value_type hsum(const V& v) {
  return at::vec::vec_reduce_all<typename V::value_type>([](V& a, V& b) { return a + b; }, v);
}

// mean and rstd of a row s[H] whose sum the caller computed while writing it. A second pass over the row takes
// the centred sums of d = s - mean and d^2 (the corrected two-pass algorithm: the first adds back what rounding
// took from the first mean, which matters when the spread is tiny beside the mean), with four accumulators of
// each (one would chain every FMA on the previous one's latency).
template <typename A>
inline void row_stats(const A* s, int64_t H, A sum, double eps, A* mean_out, A* rstd_out) {
  using V = at::vec::Vectorized<A>;
  constexpr int64_t W = V::size();
  const A mean = sum / A(H);
  const V vmean(mean);
  V d0(A(0)), d1(A(0)), d2(A(0)), d3(A(0)), q0(A(0)), q1(A(0)), q2(A(0)), q3(A(0));
  auto step = [&](const A* p, V& dacc, V& qacc) {
    const V d = V::loadu(p) - vmean;
    dacc = dacc + d;
    qacc = at::vec::fmadd(d, d, qacc);
  };
  int64_t c = 0;
  for (; c + 4 * W <= H; c += 4 * W) {
    step(s + c, d0, q0);
    step(s + c + W, d1, q1);
    step(s + c + 2 * W, d2, q2);
    step(s + c + 3 * W, d3, q3);
  }
  for (; c + W <= H; c += W) step(s + c, d0, q0);
  A dsum = hsum((d0 + d1) + (d2 + d3));
  A qsum = hsum((q0 + q1) + (q2 + q3));
  for (; c < H; ++c) {
    const A d = s[c] - mean;
    dsum += d;
    qsum += d * d;
  }
  const A var = std::max(A(0), (qsum - dsum * dsum / A(H)) / A(H));
  *mean_out = mean + dsum / A(H);
  *rstd_out = A(1) / std::sqrt(var + A(eps));
}

// out_i = (s_i - mean_i) * rstd_i * weight + bias for R rows at once (R = 1 or 2), so each vector of weight and
// bias is loaded once per R rows: with the row in L1, loads are what this pass spends its time on.
template <int R, typename T>
inline void normalise_rows(const acc_t<T>* const* s, int64_t H, const T* weight, const T* bias,
                           const acc_t<T>* mean, const acc_t<T>* rstd, T* const* out) {
  using V = AccVec<T>;
  constexpr int64_t W = vec_width<T>();
  V vmean[R], vrstd[R];
  for (int i = 0; i < R; ++i) vmean[i] = V(mean[i]), vrstd[i] = V(rstd[i]);
  int64_t c = 0;
  for (; c + W <= H; c += W) {
    const V w = load_acc(weight + c), b = load_acc(bias + c);
    for (int i = 0; i < R; ++i) store_acc(out[i] + c, at::vec::fmadd((V::loadu(s[i] + c) - vmean[i]) * vrstd[i], w, b));
  }
  if (c < H) {
    const int64_t n = H - c;
    const V w = load_acc(weight + c, n), b = load_acc(bias + c, n);
    for (int i = 0; i < R; ++i) {
      store_acc(out[i] + c, at::vec::fmadd((V::loadu(s[i] + c, n) - vmean[i]) * vrstd[i], w, b), n);
    }
  }
}

// LayerNorm of rows [begin, end) whose inputs a kernel computes: fill(r, s) writes row r's values before
// normalisation (H, accumulation type) into the scratch row s and returns their sum (the mean's pass, done
// while the values are in registers). Writes out[r * H ...], mean[r], rstd[r].
template <typename T, typename Fill>
inline void layernorm_rows(int64_t begin, int64_t end, int64_t H, Fill fill, const T* weight, const T* bias,
                           double eps, T* out, acc_t<T>* mean, acc_t<T>* rstd) {
  using A = acc_t<T>;
  std::vector<A> scratch(2 * H);
  A* s[2] = {scratch.data(), scratch.data() + H};
  int64_t r = begin;
  for (; r + 2 <= end; r += 2) {
    const A sum0 = fill(r, s[0]);
    const A sum1 = fill(r + 1, s[1]);
    row_stats(s[0], H, sum0, eps, mean + r, rstd + r);
    row_stats(s[1], H, sum1, eps, mean + r + 1, rstd + r + 1);
    T* o[2] = {out + r * H, out + (r + 1) * H};
    normalise_rows<2, T>(s, H, weight, bias, mean + r, rstd + r, o);
  }
  if (r < end) {
    row_stats(s[0], H, fill(r, s[0]), eps, mean + r, rstd + r);
    T* o[1] = {out + r * H};
    normalise_rows<1, T>(s, H, weight, bias, mean + r, rstd + r, o);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace fastbert::cpu
