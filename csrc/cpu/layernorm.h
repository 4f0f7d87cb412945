// LayerNorm of rows a kernel computes into a scratch row of the accumulation type, shared by the embeddings
// and bias_residual_layernorm kernels. Two passes over a row: the first computes it (the kernel's part),
// stores it to the scratch row and takes its statistics from shifted sums (stable for eps = 1e-12 on BERT's
// outlier dimensions, where E[x^2] - E[x]^2 can go negative); the second writes the normalised row. The
// scratch row sits in L1, so the passes cost instructions and loads, not memory traffic: the fewer passes the
// better, and rows go in pairs that share the loads of weight and bias.
#pragma once
#include <ATen/cpu/vec/functional.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/vec.h"

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

template <typename V>
inline typename V::value_type hsum(const V& v) {
  return at::vec::vec_reduce_all<typename V::value_type>([](V& a, V& b) { return a + b; }, v);
}

// Writes two rows' values before normalisation into their scratch rows s0, s1 (accumulation type) and computes
// each row's mean and rstd in the same pass, from sums of d = s - K around a pivot K: the mean of the row's
// first min(H, 4W) values. Shifted sums are exact enough when K is near the mean, and this K is provably near
// it: by Cauchy-Schwarz |K - mean| <= std * sqrt(H / m) for a pivot over m values, so the variance's rounding
// error grows by at most 1 + H/m (13 at H = 768, 17 at H = 1024) over the two-pass algorithm's, where the
// naive E[s^2] - E[s]^2 loses everything once the mean dwarfs the spread (tests/ops/test_layernorm.py covers
// both a large offset and a pivot placed on outliers). One pass instead of two: a row is stored once and not
// re-read for its statistics. The two rows go in lockstep: two independent accumulator chains, and loads the
// rows share (a bias) made once per column. (Plain variables, not arrays over rows: GCC keeps arrays of
// vectors in memory and stores them every iteration.)
// row0(c, n), row1(c, n) return the rows' values at columns [c, c + n) as AccVecs, with the lanes past n zero.
template <typename A, typename Row>
C10_ALWAYS_INLINE void fill_row_pair_stats(Row row0, Row row1, int64_t H, A* s0, A* s1, double eps, A* mean, A* rstd) {
  using V = at::vec::Vectorized<A>;
  constexpr int64_t W = V::size();
  const int64_t head = std::min(H, 4 * W);
  V k0(A(0)), k1(A(0));
  int64_t h = 0;
  for (; h + W <= head; h += W) {
    const V v0 = row0(h, W), v1 = row1(h, W);
    v0.store(s0 + h);
    v1.store(s1 + h);
    k0 = k0 + v0;
    k1 = k1 + v1;
  }
  if (h < head) {  // a row shorter than 4 vectors: its last, partial one
    const int64_t n = head - h;
    const V v0 = row0(h, n), v1 = row1(h, n);
    v0.store(s0 + h, n);
    v1.store(s1 + h, n);
    k0 = k0 + v0;
    k1 = k1 + v1;
  }
  const A K0 = hsum(k0) / A(head), K1 = hsum(k1) / A(head);
  const V vK0(K0), vK1(K1);
  V d0(A(0)), d1(A(0)), q0(A(0)), q1(A(0));
  auto add = [](const V& d, V& dsum, V& qsum) {
    dsum = dsum + d;
    qsum = at::vec::fmadd(d, d, qsum);
  };
  int64_t c = 0;
  for (; c + W <= head; c += W) {
    add(V::loadu(s0 + c) - vK0, d0, q0);
    add(V::loadu(s1 + c) - vK1, d1, q1);
  }
  for (; c + W <= H; c += W) {
    const V v0 = row0(c, W), v1 = row1(c, W);
    v0.store(s0 + c);
    v1.store(s1 + c);
    add(v0 - vK0, d0, q0);
    add(v1 - vK1, d1, q1);
  }
  if (c < H) {  // the last partial vector: centre only its n real lanes
    const int64_t n = H - c;
    const V v0 = c < head ? V::loadu(s0 + c, n) : row0(c, n);
    const V v1 = c < head ? V::loadu(s1 + c, n) : row1(c, n);
    if (c >= head) v0.store(s0 + c, n), v1.store(s1 + c, n);
    add(V::set(V(A(0)), v0 - vK0, n), d0, q0);
    add(V::set(V(A(0)), v1 - vK1, n), d1, q1);
  }
  const A K[2] = {K0, K1}, dsum[2] = {hsum(d0), hsum(d1)}, qsum[2] = {hsum(q0), hsum(q1)};
  for (int i = 0; i < 2; ++i) {
    const A var = std::max(A(0), (qsum[i] - dsum[i] * dsum[i] / A(H)) / A(H));
    mean[i] = K[i] + dsum[i] / A(H);
    rstd[i] = A(1) / std::sqrt(var + A(eps));
  }
}

// out_i = (s_i - mean_i) * rstd_i * weight + bias for two rows at once, so each vector of weight and bias is
// loaded once per pair: with the rows in L1, loads are what this pass spends its time on. An odd row out passes
// itself as both rows (s1 == s0, out1 == out0: the same values are stored twice).
template <typename T>
inline void normalise_row_pair(const acc_t<T>* s0, const acc_t<T>* s1, int64_t H, const T* weight, const T* bias,
                               acc_t<T> mean0, acc_t<T> rstd0, acc_t<T> mean1, acc_t<T> rstd1, T* out0, T* out1) {
  using V = AccVec<T>;
  constexpr int64_t W = vec_width<T>();
  const V m0(mean0), r0(rstd0), m1(mean1), r1(rstd1);
  int64_t c = 0;
  for (; c + W <= H; c += W) {
    const V w = load_acc(weight + c), b = load_acc(bias + c);
    store_acc(out0 + c, at::vec::fmadd((V::loadu(s0 + c) - m0) * r0, w, b));
    store_acc(out1 + c, at::vec::fmadd((V::loadu(s1 + c) - m1) * r1, w, b));
  }
  if (c < H) {
    const int64_t n = H - c;
    const V w = load_acc(weight + c, n), b = load_acc(bias + c, n);
    store_acc(out0 + c, at::vec::fmadd((V::loadu(s0 + c, n) - m0) * r0, w, b), n);
    store_acc(out1 + c, at::vec::fmadd((V::loadu(s1 + c, n) - m1) * r1, w, b), n);
  }
}

// The reader of a row a + b (+ c) before normalisation, for layernorm_rows' fill and the backward's recompute: a,
// b rows of H, c a row of H or nullptr, summed in the accumulation type in that order. bias_residual_layernorm:
// x, residual, bias; embeddings: the word, position and token type rows.
template <typename T>
inline auto sum_row(const T* a, const T* b, const T* c) {
  return [=](int64_t col, int64_t n) {
    const AccVec<T> v = load_acc(a + col, n) + load_acc(b + col, n);
    return c ? v + load_acc(c + col, n) : v;
  };
}

// LayerNorm of rows [begin, end) whose inputs a kernel computes: fill(r) returns row r's reader, a callable
// (c, n) -> AccVec of its values before normalisation at columns [c, c + n), lanes past n zero (see
// fill_row_pair_stats). Writes out[r * H ...], mean[r], rstd[r].
template <typename T, typename Fill>
inline void layernorm_rows(int64_t begin, int64_t end, int64_t H, Fill fill, const T* weight, const T* bias, double eps,
                           T* out, acc_t<T>* mean, acc_t<T>* rstd) {
  using A = acc_t<T>;
  // Two scratch rows, each starting on a cache line: a vector store that straddles two lines costs two.
  constexpr int64_t kLine = 64 / sizeof(A);
  const int64_t Hp = (H + kLine - 1) / kLine * kLine;
  std::vector<A> scratch(2 * Hp + kLine);
  A* s0 = scratch.data() + (kLine - reinterpret_cast<uintptr_t>(scratch.data()) / sizeof(A) % kLine) % kLine;
  A* s1 = s0 + Hp;
  int64_t r = begin;
  for (; r + 2 <= end; r += 2) {
    fill_row_pair_stats(fill(r), fill(r + 1), H, s0, s1, eps, mean + r, rstd + r);
    normalise_row_pair<T>(s0, s1, H, weight, bias, mean[r], rstd[r], mean[r + 1], rstd[r + 1], out + r * H,
                          out + (r + 1) * H);
  }
  if (r < end) {  // an odd row out: computed as a pair with itself
    A mean2[2], rstd2[2];
    fill_row_pair_stats(fill(r), fill(r), H, s0, s1, eps, mean2, rstd2);
    mean[r] = mean2[0], rstd[r] = rstd2[0];
    normalise_row_pair<T>(s0, s0, H, weight, bias, mean[r], rstd[r], mean[r], rstd[r], out + r * H, out + r * H);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace fastbert::cpu
