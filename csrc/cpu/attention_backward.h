// The backward of softmax(Q K^T * scale [+ mask]) V for one (sequence, head), shared by attention_backward
// (packed, ragged) and attention_masked_backward (padded, explicit mask).
//
// FlashAttention's backward, one (sequence, head) at a time, with the n x n blocks in per-thread scratch:
//   Q, K, V (bias added), dO      staged in the accumulation type, (n, d) each
//   D_i = dO_i . O_i              = sum_j P~_ij dP~_ij, so the softmax backward needs no row sum over P
//   S   = scale Q K^T             GEMM (MKL through at::mm_out on the scratch buffers)
//   P   = exp(S - lse)            from the forward's saved log-sum-exp (packed), or a recomputed softmax
//                                 (masked: with a dtype-min additive mask the fp32 lse rounds to the minimum)
//   dP~ = dO V^T                  GEMM
//   Z   = keep / (1 - p)          the dropout mask regenerated from (seed, offset, row, col), never stored
//   dS  = P * (dP~ Z - D)         elementwise, vectorized
//   dV  = (P Z)^T dO,  dQ = scale dS K,  dK = scale dS^T Q      GEMMs
// then dQ | dK | dV are written into the head's columns of grad_qkv. Rows whose lse is -inf (nothing to
// attend to) get P = 0 and so zero gradients, never NaN.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/layernorm.h"
#include "cpu/vec.h"
#include "dropout_hash.h"

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

// Products this small (a short sequence's head) cost less than at::mm_out's tensor set-up and dispatch: plain
// loops that the compiler vectorizes along N, each row of C a sum of rows of op(Y) (a transposed Y is copied
// into a per-thread row-major buffer first). Fine-tuning MiniLM on 8-60-token texts makes ~6000 of these a step.
constexpr int64_t kSmallGemmWork = 64 * 64 * 64;

template <typename A>
inline void small_gemm(bool tx, bool ty, int64_t M, int64_t N, int64_t K, const A* X, int64_t ldx, const A* Y,
                       int64_t ldy, A* C, int64_t ldc) {
  thread_local std::vector<A> yt;
  if (ty) {  // Y is (N, K): make it (K, N)
    yt.resize(static_cast<size_t>(K * N));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) yt[k * N + n] = Y[n * ldy + k];
    Y = yt.data();
    ldy = N;
  }
  for (int64_t m = 0; m < M; ++m) {
    A* __restrict c = C + m * ldc;
    for (int64_t n = 0; n < N; ++n) c[n] = 0;
    for (int64_t k = 0; k < K; ++k) {
      const A xmk = tx ? X[k * ldx + m] : X[m * ldx + k];
      const A* __restrict y = Y + k * ldy;
#pragma omp simd
      for (int64_t n = 0; n < N; ++n) c[n] += xmk * y[n];
    }
  }
}

// Row-major C (M, N) = op(X) op(Y) on raw buffers: small products in plain loops, the rest through at::mm_out
// (MKL; single-threaded inside the tasks' parallel region). (at::native::cpublas::gemm's BLAS overloads are not
// exported by libtorch.)
template <typename A>
inline void rowmajor_gemm(bool tx, bool ty, int64_t M, int64_t N, int64_t K, const A* X, int64_t ldx, const A* Y,
                          int64_t ldy, A* C, int64_t ldc) {
  if (M * N * K <= kSmallGemmWork) {
    small_gemm<A>(tx, ty, M, N, K, X, ldx, Y, ldy, C, ldc);
    return;
  }
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value);
  auto x = tx ? at::from_blob(const_cast<A*>(X), {K, M}, {ldx, 1}, opts).t()
              : at::from_blob(const_cast<A*>(X), {M, K}, {ldx, 1}, opts);
  auto y = ty ? at::from_blob(const_cast<A*>(Y), {N, K}, {ldy, 1}, opts).t()
              : at::from_blob(const_cast<A*>(Y), {K, N}, {ldy, 1}, opts);
  auto c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  at::mm_out(c, x, y);
}

// The tensors of one backward call (row-major, contiguous). Rows are tokens: packed row r, or b * L + l.
template <typename T>
struct AttnBwdIO {
  const T* qkv;       // (rows, 3H)
  const T* bias;      // (3H,) or nullptr
  const T* grad_out;  // (rows, H)
  const T* out;       // (rows, H)
  T* grad_qkv;        // (rows, 3H)
  int64_t H, d;
  double scale;
  double dropout_p;
  DropoutHash drop;  // make_dropout_hash(dropout_p, seed, offset)
};

// A call's IO from its contiguous tensors (qkv (rows, 3H) or (B, L, 3H); bias or nullptr).
template <typename T>
inline AttnBwdIO<T> attn_bwd_io(const at::Tensor& qkv, const at::Tensor* bias, const at::Tensor& grad_out,
                                const at::Tensor& out, at::Tensor& grad_qkv, int64_t num_heads, double scale,
                                double dropout_p, int64_t seed, int64_t offset) {
  const int64_t H = qkv.size(-1) / 3;
  return {qkv.const_data_ptr<T>(),
          bias ? bias->const_data_ptr<T>() : nullptr,
          grad_out.const_data_ptr<T>(),
          out.const_data_ptr<T>(),
          grad_qkv.mutable_data_ptr<T>(),
          H,
          H / num_heads,
          scale,
          dropout_p,
          make_dropout_hash(dropout_p, seed, offset)};
}

template <typename A>
struct AttnBwdScratch {
  std::vector<A> q, k, v, go, dsum, s, ds, dq, dk, dv, z;
  explicit AttnBwdScratch(int64_t n, int64_t d)
      : q(n * d), k(n * d), v(n * d), go(n * d), dsum(n), s(n * n), ds(n * n), dq(n * d), dk(n * d), dv(n * d), z(n) {}
};

// One (sequence, head): rows row0 .. row0 + n of the batch, head h. lse: n values (row i at lse[i]), used when
// recompute_softmax is false. drop_row0: the dropout counter row of query 0 (query i uses drop_row0 + i).
// mask_row(i, s): applies the mask to the scaled score row s (n values) of query i.
template <typename T, typename MaskRow>
void attention_backward_task(const AttnBwdIO<T>& io, int64_t row0, int64_t n, int64_t h, const float* lse,
                             uint64_t drop_row0, bool recompute_softmax, MaskRow&& mask_row,
                             AttnBwdScratch<acc_t<T>>& buf) {
  using A = acc_t<T>;
  using V = AccVec<T>;
  constexpr int64_t W = vec_width<T>();
  const int64_t H = io.H, d = io.d, H3 = 3 * H;
  A *Q = buf.q.data(), *K = buf.k.data(), *Vv = buf.v.data(), *dO = buf.go.data(), *Dsum = buf.dsum.data();
  A *S = buf.s.data(), *dS = buf.ds.data(), *dQ = buf.dq.data(), *dK = buf.dk.data(), *dV = buf.dv.data();

  // Stage Q, K, V (+ bias) and dO in the accumulation type; D_i = dO_i . O_i.
  for (int64_t i = 0; i < n; ++i) {
    const T* src = io.qkv + (row0 + i) * H3 + h * d;
    const T* gsrc = io.grad_out + (row0 + i) * H + h * d;
    const T* osrc = io.out + (row0 + i) * H + h * d;
    const T* bsrc = io.bias ? io.bias + h * d : nullptr;
    V dot(A(0));
    for (int64_t c = 0; c < d; c += W) {
      const int64_t m = std::min(W, d - c);
      V q = load_acc(src + c, m), k = load_acc(src + H + c, m), v = load_acc(src + 2 * H + c, m);
      if (bsrc) {
        q = q + load_acc(bsrc + c, m);
        k = k + load_acc(bsrc + H + c, m);
        v = v + load_acc(bsrc + 2 * H + c, m);
      }
      q.store(Q + i * d + c, m);
      k.store(K + i * d + c, m);
      v.store(Vv + i * d + c, m);
      const V go = load_acc(gsrc + c, m);
      go.store(dO + i * d + c, m);
      dot = at::vec::fmadd(go, load_acc(osrc + c, m), dot);
    }
    Dsum[i] = hsum(dot);
  }

  rowmajor_gemm<A>(false, true, n, n, d, Q, d, K, d, S, n);     // S = Q K^T (scaled below)
  rowmajor_gemm<A>(false, true, n, n, d, dO, d, Vv, d, dS, n);  // dP~ = dO V^T

  const bool dropout = io.dropout_p > 0;
  const A inv_keep = dropout ? A(1) / A(1.0 - io.dropout_p) : A(1);
  constexpr A kNegInf = -std::numeric_limits<A>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    A* s = S + i * n;
    A* dp = dS + i * n;
    const V vscale(A(io.scale));
    for (int64_t j = 0; j < n; j += W) {
      const int64_t m = std::min(W, n - j);
      (V::loadu(s + j, m) * vscale).store(s + j, m);
    }
    mask_row(i, s);
    A shift, norm = A(1);
    if (recompute_softmax) {
      A mx = kNegInf;
      for (int64_t j = 0; j < n; ++j) mx = std::max(mx, s[j]);
      shift = mx;
      if (mx != kNegInf) {
        A sum = 0;
        for (int64_t j = 0; j < n; ++j) sum += std::exp(s[j] - mx);
        norm = A(1) / sum;
      }
    } else {
      shift = static_cast<A>(lse[i]);
    }
    if (!std::isfinite(shift)) {  // nothing to attend to: P = 0, no gradient
      std::fill(s, s + n, A(0));
      std::fill(dp, dp + n, A(0));
      continue;
    }
    if (dropout) {
      const uint32_t key = io.drop.row_key(drop_row0 + i);
      A* z = buf.z.data();
      for (int64_t j = 0; j < n; ++j) z[j] = io.drop.keep(key, static_cast<uint32_t>(j)) ? inv_keep : A(0);
    }
    const V vshift(shift), vnorm(norm), vD(Dsum[i]);
    for (int64_t j = 0; j < n; j += W) {
      const int64_t m = std::min(W, n - j);
      const V p = (V::loadu(s + j, m) - vshift).exp() * vnorm;
      V dpv = V::loadu(dp + j, m);
      V pd = p;
      if (dropout) {
        const V z = V::loadu(buf.z.data() + j, m);
        dpv = dpv * z;
        pd = p * z;
      }
      (p * (dpv - vD) * vscale).store(dp + j, m);  // scale dS
      pd.store(s + j, m);                 // P Z
    }
  }

  rowmajor_gemm<A>(true, false, n, d, n, S, n, dO, d, dV, d);    // dV = (P Z)^T dO
  rowmajor_gemm<A>(false, false, n, d, n, dS, n, K, d, dQ, d);   // dQ = (scale dS) K
  rowmajor_gemm<A>(true, false, n, d, n, dS, n, Q, d, dK, d);    // dK = (scale dS)^T Q

  for (int64_t i = 0; i < n; ++i) {
    T* dst = io.grad_qkv + (row0 + i) * H3 + h * d;
    for (int64_t c = 0; c < d; c += W) {
      const int64_t m = std::min(W, d - c);
      store_acc(dst + c, V::loadu(dQ + i * d + c, m), m);
      store_acc(dst + H + c, V::loadu(dK + i * d + c, m), m);
      store_acc(dst + 2 * H + c, V::loadu(dV + i * d + c, m), m);
    }
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace fastbert::cpu
