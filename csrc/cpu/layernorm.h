// LayerNorm of rows a kernel computes into a scratch row of the accumulation type, shared by the embeddings
// and bias_residual_layernorm kernels: two passes for the statistics (mean, then centred variance: stable for
// eps = 1e-12 on BERT's outlier dimensions, where E[x^2] - E[x]^2 can go negative), a third writes the
// normalised row. The scratch row sits in L1, so the passes cost instructions and loads, not memory traffic:
// each reduction keeps four accumulators, and rows go in pairs that share the loads of weight and bias.
#pragma once
#include <ATen/cpu/vec/functional.h>

#include <cmath>
#include <vector>

#include "cpu/vec.h"

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

template <typename V>
inline typename V::value_type hsum(const V& v) {
  return at::vec::vec_reduce_all<typename V::value_type>([](V& a, V& b) { return a + b; }, v);
}

// sum over c < H of term(V::loadu(s + c)) (full vectors) plus tail(s[c]) (the rest), with four independent
// accumulators: one would chain every add on the previous one's latency (3-4 cycles per vector).
template <typename V, typename Term, typename Tail>
inline typename V::value_type row_reduce(const typename V::value_type* s, int64_t H, Term term, Tail tail) {
  using A = typename V::value_type;
  constexpr int64_t W = V::size();
  V a0(A(0)), a1(A(0)), a2(A(0)), a3(A(0));
  int64_t c = 0;
  for (; c + 4 * W <= H; c += 4 * W) {
    a0 = term(V::loadu(s + c), a0);
    a1 = term(V::loadu(s + c + W), a1);
    a2 = term(V::loadu(s + c + 2 * W), a2);
    a3 = term(V::loadu(s + c + 3 * W), a3);
  }
  for (; c + W <= H; c += W) a0 = term(V::loadu(s + c), a0);
  A total = hsum((a0 + a1) + (a2 + a3));
  for (; c < H; ++c) total += tail(s[c]);
  return total;
}

// mean and rstd of a row s[H]: two passes (mean, then centred variance).
template <typename A>
inline void row_stats(const A* s, int64_t H, double eps, A* mean_out, A* rstd_out) {
  using V = at::vec::Vectorized<A>;
  const A mean = row_reduce<V>(s, H, [](const V& x, const V& acc) { return acc + x; },
                               [](A x) { return x; }) / A(H);
  const V vmean(mean);
  const A var = row_reduce<V>(s, H, [&](const V& x, const V& acc) {
    const V d = x - vmean;
    return at::vec::fmadd(d, d, acc);
  }, [&](A x) { return (x - mean) * (x - mean); }) / A(H);
  *mean_out = mean;
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
// normalisation (H, accumulation type) into the scratch row s. Writes out[r * H ...], mean[r], rstd[r].
template <typename T, typename Fill>
inline void layernorm_rows(int64_t begin, int64_t end, int64_t H, Fill fill, const T* weight, const T* bias,
                           double eps, T* out, acc_t<T>* mean, acc_t<T>* rstd) {
  using A = acc_t<T>;
  std::vector<A> scratch(2 * H);
  A* s[2] = {scratch.data(), scratch.data() + H};
  int64_t r = begin;
  for (; r + 2 <= end; r += 2) {
    fill(r, s[0]);
    fill(r + 1, s[1]);
    row_stats(s[0], H, eps, mean + r, rstd + r);
    row_stats(s[1], H, eps, mean + r + 1, rstd + r + 1);
    T* o[2] = {out + r * H, out + (r + 1) * H};
    normalise_rows<2, T>(s, H, weight, bias, mean + r, rstd + r, o);
  }
  if (r < end) {
    fill(r, s[0]);
    row_stats(s[0], H, eps, mean + r, rstd + r);
    T* o[1] = {out + r * H};
    normalise_rows<1, T>(s, H, weight, bias, mean + r, rstd + r, o);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace fastbert::cpu
