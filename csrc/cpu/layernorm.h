// LayerNorm of one row held in the accumulation type, shared by the embeddings and bias_residual_layernorm
// kernels: two passes for the statistics (mean, then centred variance: stable for eps = 1e-12 on BERT's
// outlier dimensions, where E[x^2] - E[x]^2 can go negative), a third writes the normalised row.
#pragma once
#include <cmath>

#include "cpu/vec.h"

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

template <typename V>
inline typename V::value_type hsum(const V& v) {
  alignas(64) typename V::value_type buf[V::size()];
  v.store(buf);
  typename V::value_type s = 0;
  for (int i = 0; i < V::size(); ++i) s += buf[i];
  return s;
}

// s: the row (H values, accumulation type); writes out[H] = (s - mean) * rstd * weight + bias.
template <typename T>
inline void layernorm_row(const acc_t<T>* s, int64_t H, const T* weight, const T* bias, double eps, T* out,
                          acc_t<T>* mean_out, acc_t<T>* rstd_out) {
  using A = acc_t<T>;
  using V = AccVec<T>;
  constexpr int64_t W = vec_width<T>();
  V acc(A(0));
  int64_t c = 0;
  for (; c + W <= H; c += W) acc = acc + V::loadu(s + c);
  A sum = hsum(acc);
  for (; c < H; ++c) sum += s[c];
  const A mean = sum / A(H);

  const V vmean(mean);
  V sq(A(0));
  c = 0;
  for (; c + W <= H; c += W) {
    V d = V::loadu(s + c) - vmean;
    sq = at::vec::fmadd(d, d, sq);
  }
  A var = hsum(sq);
  for (; c < H; ++c) var += (s[c] - mean) * (s[c] - mean);
  var /= A(H);
  const A rstd = A(1) / std::sqrt(var + A(eps));

  const V vrstd(rstd);
  for (c = 0; c < H; c += W) {
    const int64_t n = std::min(W, H - c);
    V y = (V::loadu(s + c, n) - vmean) * vrstd;
    store_acc(out + c, at::vec::fmadd(y, load_acc(weight + c, n), load_acc(bias + c, n)), n);
  }
  *mean_out = mean;
  *rstd_out = rstd;
}

}  // namespace CPU_CAPABILITY
}  // namespace fastbert::cpu
