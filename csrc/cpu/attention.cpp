// attention / attention_masked: softmax(Q K^T * scale [+ mask]) V per (sequence, head), from the fused QKV
// GEMM output plus its bias, streaming over key blocks with an online softmax; never a (B, nh, L, L) tensor.
//
// Fuses: the QKV bias add, the split into heads, the scale, QK^T, the mask, the softmax (fp32 statistics; fp64
// for float64), the counter-based dropout of the probabilities, PV, and the merge of heads back into (T, H).
// Memory traffic: each head of qkv is read once per task that covers it; out (T, H) and lse are written once.
//
// Parallel decomposition: one task per sequence (every head in turn) for batches of many short sequences, else
// one per (sequence, head), split further into query chunks only when there are too few tasks for the threads;
// tasks are handed out longest first from an atomic counter (sequences of a ragged batch differ in cost by n^2). A task
// first stages its head in per-thread scratch (kept between calls), in the accumulation type, bias added: K^T (d, n)
// (rows staged, then transposed in 16 x 16 register tiles), V (n, dp) and Q * scale (rows, dp), dp = d rounded up to
// the vector width, zero padded; qkv rows are 3H apart, so they are software-prefetched. Then, per block of BQ = 48
// query rows and BK = 256 keys:
//   S = Q K^T        register-blocked micro-GEMM: MR query rows x NR vectors of keys, FMA over d
//   mask, online softmax (running max m, running sum l, O rescaled when m grows), dropout
//   O += P V         the same micro-GEMM: MR rows x NR vectors of head dims, FMA over keys
// and finally out = O / (l (1 - p)), lse = m + log l (-inf and a zero row when nothing was kept).
//
// bfloat16 with AVX512-BF16 (the AVX-512 build on a processor with avx512_bf16, chosen at run time; off with
// fastbert.ops.set_cpu_bf16_dot(False) or FASTBERT_CPU_BF16_DOT=0, and for calls that autograd records, whose
// backward recomputes the scores in fp32 against this call's lse): the head is staged in bf16, not fp32, and
// both products run as VDPBF16PS dot products (two bf16 products added into an fp32 lane per instruction, twice
// the FMA path's multiplies per instruction), accumulating in fp32:
//   Q * scale rows (d rounded up to 32, zero padded); K^T as (d/2, n) pairs of head dims, (k[c], k[c+1]) in
//   one 32-bit word (K rows staged, then transposed as 32-bit words); V as key pairs, V2[j/2][c] =
//   (v[j][c], v[j+1][c]) (VNNI layout); S = Q K^T: MR rows x NR x 16 keys, one dot product per 2 head dims;
//   the softmax step (softmax_row_dot; without mask or dropout softmax_rows_dot, six rows interleaved) writes
//   P = bf16(e) straight from the exp, dropout's keep test vectorised
//   (the same uint32 hash); O += P V: MR rows x NR x 16 head dims, one dot product per 2 keys.
// Numerics: (q + bias) * scale, k + bias, v + bias and the probabilities are rounded to bf16 (RNE) before the
// products, as a bf16 PyTorch model rounds its QKV projection's output and softmax; the statistics (max, sum,
// rescale), the mask, the dropout mask, lse and the final divide stay fp32 as above. lse moves by up to
// ~2^-8 |scale| max_j sum_c |q_c k_jc| (5e-3 for O(1) inputs at d = 64), out by ~1-2 x the fp32-staged path's
// error (its one output rounding) for O(1) inputs, more for sharp softmaxes (tests/ops/test_attention.py). The
// bf16 tensors (half the scratch bytes of the fp32 staging) live in the fp32 path's scratch regions (each
// fits), plus P in bf16 (BQ, BK).
//
// attention_quant: the same computation, its output rows quantized to int8 for the next GEMM (csrc/cpu/quant.h's
// row rule, exactly quantize_rows of the output attention would write) without the float output being read back
// from memory: with tasks of every head, each task quantizes its rows from its scratch.
//
// Row index of a softmax row (the dropout counter and the lse position): packed: head * T + token;
// masked: (b * nh + head) * L + query. The dropout mask is csrc/dropout_hash.h's.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <vector>

#include "cpu/attention_args.h"
#include "cpu/isa.h"
#include "cpu/quant.h"
#include "cpu/vec.h"
#include "dropout_hash.h"

// GCC 12 warns "may be used uninitialized" inside ATen's AVX-512 intrinsics wrappers (masked loads, exp);
// those are the headers' placeholders, not reads of uninitialised data.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace fastbert::cpu {

// What one call computes; shared by the packed and the masked op (plain data, the same in every ISA).
struct AttnParams {
  int64_t T = 0;  // tokens: packed T, or B * L for the masked layout
  int64_t num_heads = 0;  // nh
  int64_t head_dim = 0;  // d
  int64_t hidden = 0;  // H = nh * d
  int64_t batch = 0;  // B (sequences)
  const int32_t* cu_seqlens = nullptr;  // packed: (B + 1,); masked: nullptr (sequence b owns b*L .. b*L+L)
  int64_t seqlen = 0;  // masked: L
  int64_t max_seqlen = 0;  // the longest sequence
  double scale = 1.0;
  double dropout_p = 0.0;
  int64_t seed = 0;
  int64_t offset = 0;
  // Mask (masked op only), viewed as (B, nh, L, L) through its strides; kind 0 none, 1 bool, 2 additive.
  int mask_kind = 0;
  const void* mask = nullptr;
  int64_t mask_stride[4] = {0, 0, 0, 0};
  // bfloat16 may take the AVX512-BF16 dot-product path: false when autograd records the call (qkv or its bias
  // requires grad), whose backward recomputes the scores in fp32 against this call's lse.
  bool bf16_dot = true;
  // attention_quant: the output rows quantized to int8 (quant.h's row rule, after smooth) instead of written in
  // float; out and lse are then not written.
  const QuantOut* quant = nullptr;
  const float* quant_smooth = nullptr;
};

namespace CPU_CAPABILITY {

using at::vec::Vectorized;

// ---------------------------------------------------------------- the micro-GEMM

// Register blocking: MR rows of A (broadcast) x NR vectors of B's row; NR_MAX vectors fit the register file
// beside MR * NR_MAX accumulators (AVX-512: 6 x 4 = 24 of 32 zmm; AVX2: 6 x 2 = 12 of 16 ymm).
template <typename acc>
constexpr int kNRMax = sizeof(Vectorized<acc>) >= 64 ? 4 : 2;
constexpr int kMR = 6;

// C[MR x NR*W] (+)= A[MR x K] B[K x NR*W]; A row-major (lda), B row-major (ldb), C row-major (ldc).
template <typename acc, int NR>
inline void micro_gemm(int64_t K, const acc* A, int64_t lda, const acc* B, int64_t ldb, acc* C, int64_t ldc,
                       bool accumulate) {
  using V = Vectorized<acc>;
  constexpr int W = V::size();
  V c[kMR][NR];
  if (accumulate) {
#pragma GCC unroll 8
    for (int m = 0; m < kMR; ++m)
#pragma GCC unroll 4
      for (int n = 0; n < NR; ++n) c[m][n] = V::loadu(C + m * ldc + n * W);
  } else {
#pragma GCC unroll 8
    for (int m = 0; m < kMR; ++m)
#pragma GCC unroll 4
      for (int n = 0; n < NR; ++n) c[m][n] = V(acc(0));
  }
  for (int64_t k = 0; k < K; ++k) {
    V b[NR];
#pragma GCC unroll 4
    for (int n = 0; n < NR; ++n) b[n] = V::loadu(B + k * ldb + n * W);
#pragma GCC unroll 8
    for (int m = 0; m < kMR; ++m) {
      const V a(A[m * lda + k]);
#pragma GCC unroll 4
      for (int n = 0; n < NR; ++n) c[m][n] = at::vec::fmadd(a, b[n], c[m][n]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < kMR; ++m)
#pragma GCC unroll 4
    for (int n = 0; n < NR; ++n) c[m][n].store(C + m * ldc + n * W);
}

// C[rows x cols] (+)= A[rows x K] B[K x cols], rows a multiple of kMR, cols a multiple of W; column panels
// outermost so a K x NR*W panel of B stays in L1 across the row groups.
template <typename acc>
void block_gemm(int64_t rows, int64_t cols, int64_t K, const acc* A, int64_t lda, const acc* B, int64_t ldb, acc* C,
                int64_t ldc, bool accumulate) {
  constexpr int W = Vectorized<acc>::size();
  constexpr int NRM = kNRMax<acc>;
  for (int64_t c0 = 0; c0 < cols; c0 += NRM * W) {
    const int nr = static_cast<int>(std::min<int64_t>(NRM, (cols - c0) / W));
    for (int64_t r0 = 0; r0 < rows; r0 += kMR) {
      const acc* a = A + r0 * lda;
      const acc* b = B + c0;
      acc* c = C + r0 * ldc + c0;
      switch (nr) {
        case 4:
          if constexpr (NRM >= 4) { micro_gemm<acc, 4>(K, a, lda, b, ldb, c, ldc, accumulate); }
          break;
        case 3:
          if constexpr (NRM >= 3) { micro_gemm<acc, 3>(K, a, lda, b, ldb, c, ldc, accumulate); }
          break;
        case 2: micro_gemm<acc, 2>(K, a, lda, b, ldb, c, ldc, accumulate); break;
        default: micro_gemm<acc, 1>(K, a, lda, b, ldb, c, ldc, accumulate); break;
      }
    }
  }
}

// ---------------------------------------------------------------- vector helpers

template <typename acc>
inline Vectorized<acc> vexp(const Vectorized<acc>& x) {
  if constexpr (std::is_same_v<acc, float>) {
    return x.exp_u20();  // max error ~20 ulp (~1e-6 relative), well inside the kernel's tolerance
  } else {
    return x.exp();
  }
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Per-thread scratch, 64-byte aligned, uninitialised. Up to kKeepBytes it is kept between calls (grown when
// too small), so that repeated calls do not page-fault fresh memory in; larger requests (very long
// sequences) are allocated for the call and freed after it.
constexpr size_t kKeepBytes = size_t(32) << 20;

struct ScratchLease {
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, Free> owned;
  char* ptr = nullptr;
};

inline void lease_scratch(ScratchLease& lease, size_t bytes) {
  struct Kept {
    std::unique_ptr<char, ScratchLease::Free> p;
    size_t n = 0;
  };
  thread_local Kept kept;
  bytes = (bytes + 63) / 64 * 64;
  if (bytes <= kept.n) {
    lease.ptr = kept.p.get();
    return;
  }
  char* p = static_cast<char*>(std::aligned_alloc(64, bytes));
  TORCH_CHECK(p != nullptr, "attention: out of memory allocating ", bytes, " bytes of scratch");
  if (bytes <= kKeepBytes) {
    kept.p.reset(p);
    kept.n = bytes;
  } else {
    lease.owned.reset(p);
  }
  lease.ptr = p;
}

// Stage one (token, head) slice: dst[0 .. d) = (src + bias) * mul in acc, dst[d .. dp) = 0.
template <typename scalar_t, typename acc>
inline void stage_row(const scalar_t* src, const scalar_t* bias, acc mul, bool scaled, acc* dst, int64_t d,
                      int64_t dp) {
  using V = Vectorized<acc>;
  constexpr int64_t W = V::size();
  int64_t c = 0;
  for (; c < d; c += W) {
    const int64_t m = std::min(W, d - c);
    V x = load_acc(src + c, m);
    if (bias) x = x + load_acc(bias + c, m);
    if (scaled) x = x * V(mul);
    if (m == W) x.store(dst + c);
    else {
      V(acc(0)).store(dst + c);
      x.store(dst + c, m);
    }
  }
}

inline void prefetch_bytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 0, 3);
}

// Staging key j of a head: prefetch the k and v slices (and the q slice when with_q) of key j + kAheadKeys, whose
// q slice starts at ahead; qkv rows are 3H apart, too far for the hardware prefetcher to follow on its own.
constexpr int64_t kAheadKeys = 16;
template <typename scalar_t>
inline void prefetch_key(const scalar_t* ahead, int64_t H, int64_t d, bool with_q) {
  const int64_t bytes = d * static_cast<int64_t>(sizeof(scalar_t));
  if (with_q) prefetch_bytes(ahead, bytes);
  prefetch_bytes(ahead + H, bytes);
  prefetch_bytes(ahead + 2 * H, bytes);
}

// ---------------------------------------------------------------- bf16 dot products (AVX512-BF16)
//
// Compiled in the AVX-512 build only, in functions that carry target("avx512bf16") themselves (the file is not
// compiled with -mavx512bf16), and called only when the processor has it (bf16_dot_enabled(), isa.h).
// _mm512_dpbf16_ps(c, a, b): c[l] += a[2l] * b[2l] + a[2l+1] * b[2l+1] in fp32, for the 16 lanes l; a and b
// hold 32 bf16 each. Operands are handled as uint32 pairs of bf16 (the low half first).
#ifdef CPU_CAPABILITY_AVX512
#define FASTBERT_BF16_DOT 1
#define FASTBERT_TARGET_BF16 __attribute__((target("avx512bf16")))
// Inlined into their callers, which carry the same target: the per-row helpers below cost more in calls and in
// reloading their constants than in work at head size 32 (perf, 2026-12-07).
#define FASTBERT_INLINE inline __attribute__((always_inline))

// 16 bf16 (or m < 16, the rest 0) -> fp32, + 16 bf16 of bias when given.
FASTBERT_TARGET_BF16 inline __m512 load_bf16_f32(const c10::BFloat16* p, const c10::BFloat16* bias, int64_t m) {
  const __mmask16 k = m >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << m) - 1);
  __m512 x = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p)), 16));
  if (bias) {
    x = _mm512_add_ps(
        x, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, bias)), 16)));
  }
  return x;
}

// 32 fp32 -> 32 bf16 (round to nearest even): lo's 16 first, then hi's.
FASTBERT_TARGET_BF16 inline __m512i pack_bf16(__m512 lo, __m512 hi) { return (__m512i)_mm512_cvtne2ps_pbh(hi, lo); }

// One row of d values: dst[0 .. dq) = bf16((src + bias) * mul), zero from d on; dq a multiple of 32.
FASTBERT_TARGET_BF16 FASTBERT_INLINE void stage_row_bf16(const c10::BFloat16* src, const c10::BFloat16* bias, float mul,
                                                         bool scaled, uint16_t* dst, int64_t d, int64_t dq) {
  const __m512 vm = _mm512_set1_ps(mul);
  for (int64_t c = 0; c < dq; c += 32) {
    __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
    if (c < d) lo = load_bf16_f32(src + c, bias ? bias + c : nullptr, std::min<int64_t>(16, d - c));
    if (c + 16 < d) hi = load_bf16_f32(src + c + 16, bias ? bias + c + 16 : nullptr, std::min<int64_t>(16, d - c - 16));
    if (scaled) {
      lo = _mm512_mul_ps(lo, vm);
      hi = _mm512_mul_ps(hi, vm);
    }
    _mm512_storeu_si512(dst + c, pack_bf16(lo, hi));
  }
}

// Two rows of V (keys j and j + 1; v1 null for a missing odd key) interleaved by key pairs:
// dst[2c] = bf16(v0[c] + bias[c]), dst[2c + 1] = bf16(v1[c] + bias[c]) for c < dp (zero from d on); dp a multiple
// of 16.
FASTBERT_TARGET_BF16 FASTBERT_INLINE void stage_pair_bf16(const c10::BFloat16* v0, const c10::BFloat16* v1,
                                                          const c10::BFloat16* bias, uint16_t* dst, int64_t d,
                                                          int64_t dp) {
  // 16 of key j then 16 of key j + 1 -> alternate: element 2l from l, 2l + 1 from 16 + l.
  alignas(64) static constexpr uint16_t kIdx[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                    8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i idx = _mm512_load_si512(kIdx);
  for (int64_t c = 0; c < dp; c += 16) {
    const int64_t m = std::max<int64_t>(0, std::min<int64_t>(16, d - c));
    const c10::BFloat16* bc = bias ? bias + c : nullptr;
    const __m512 x0 = load_bf16_f32(v0 + c, bc, m);
    const __m512 x1 = v1 ? load_bf16_f32(v1 + c, bc, m) : _mm512_setzero_ps();
    _mm512_storeu_si512(dst + 2 * c, _mm512_permutexvar_epi16(idx, pack_bf16(x0, x1)));
  }
}

// One head of one sequence staged for the dot products: Q * scale rows q0 .. q1 (dq wide), K rows (dq wide) and V
// as key pairs (dp wide), bias added, from qkv rows 3H apart (prefetched kAhead keys ahead: too far apart for the
// hardware prefetcher to follow on its own).
FASTBERT_TARGET_BF16 void stage_head_bf16(const c10::BFloat16* head, int64_t H, int64_t n, int64_t q0, int64_t q1,
                                          const c10::BFloat16* bias, float scale, uint16_t* Q2, uint16_t* K2,
                                          uint16_t* V2, int64_t d, int64_t dq, int64_t dp) {
  const c10::BFloat16* qb = bias;
  const c10::BFloat16* kb = bias ? bias + H : nullptr;
  const c10::BFloat16* vb = bias ? bias + 2 * H : nullptr;
  for (int64_t j = 0; j < n; j += 2) {
    for (int64_t jj = j; jj < std::min(n, j + 2); ++jj) {
      const c10::BFloat16* row = head + jj * 3 * H;
      const int64_t a = jj + kAheadKeys;
      if (a < n) prefetch_key(row + kAheadKeys * 3 * H, H, d, a >= q0 && a < q1);
      if (jj >= q0 && jj < q1) stage_row_bf16(row, qb, scale, true, Q2 + (jj - q0) * dq, d, dq);
      stage_row_bf16(row + H, kb, 1.f, false, K2 + jj * dq, d, dq);
    }
    const c10::BFloat16* v0 = head + j * 3 * H + 2 * H;
    stage_pair_bf16(v0, j + 1 < n ? v0 + 3 * H : nullptr, vb, V2 + j * dp, d, dp);
  }
}

// C[MR x NR*16] (+)= sum over K2 pairs: A[m][pair] . B[pair][16 n ..]: A row-major uint32 pairs (lda), B rows of
// NR*16 uint32 pairs (ldb), C fp32 row-major (ldc).
template <int NR>
FASTBERT_TARGET_BF16 inline void micro_dot(int64_t K2, const uint32_t* A, int64_t lda, const uint32_t* B, int64_t ldb,
                                           float* C, int64_t ldc, bool accumulate) {
  __m512 c[kMR][NR];
#pragma GCC unroll 8
  for (int m = 0; m < kMR; ++m)
#pragma GCC unroll 4
    for (int n = 0; n < NR; ++n) c[m][n] = accumulate ? _mm512_loadu_ps(C + m * ldc + n * 16) : _mm512_setzero_ps();
  for (int64_t k = 0; k < K2; ++k) {
    __m512bh b[NR];
#pragma GCC unroll 4
    for (int n = 0; n < NR; ++n) b[n] = (__m512bh)_mm512_loadu_si512(B + k * ldb + n * 16);
#pragma GCC unroll 8
    for (int m = 0; m < kMR; ++m) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(A[m * lda + k]));
#pragma GCC unroll 4
      for (int n = 0; n < NR; ++n) c[m][n] = _mm512_dpbf16_ps(c[m][n], a, b[n]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < kMR; ++m)
#pragma GCC unroll 4
    for (int n = 0; n < NR; ++n) _mm512_storeu_ps(C + m * ldc + n * 16, c[m][n]);
}

// block_gemm's loop order over micro_dot: rows a multiple of kMR, cols a multiple of 16.
FASTBERT_TARGET_BF16 void block_dot(int64_t rows, int64_t cols, int64_t K2, const uint32_t* A, int64_t lda,
                                    const uint32_t* B, int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  for (int64_t c0 = 0; c0 < cols; c0 += 64) {
    const int nr = static_cast<int>(std::min<int64_t>(4, (cols - c0) / 16));
    for (int64_t r0 = 0; r0 < rows; r0 += kMR) {
      const uint32_t* a = A + r0 * lda;
      const uint32_t* b = B + c0;
      float* c = C + r0 * ldc + c0;
      switch (nr) {
        case 4: micro_dot<4>(K2, a, lda, b, ldb, c, ldc, accumulate); break;
        case 3: micro_dot<3>(K2, a, lda, b, ldb, c, ldc, accumulate); break;
        case 2: micro_dot<2>(K2, a, lda, b, ldb, c, ldc, accumulate); break;
        default: micro_dot<1>(K2, a, lda, b, ldb, c, ldc, accumulate); break;
      }
    }
  }
}

inline __mmask16 tail_mask(int64_t m) { return m >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << m) - 1); }

// Dropout of 16 keys of one softmax row (csrc/dropout_hash.h): the kept lanes of columns col0 .. col0 + 15.
FASTBERT_TARGET_BF16 inline __mmask16 dropout_keep16(const DropoutHash& drop, uint32_t key, uint32_t col0) {
  using u32x16 = uint32_t __attribute__((vector_size(64)));
  const u32x16 col = col0 + u32x16{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const __m512i kept = reinterpret_cast<__m512i>(drop.keep_lanes(key, col));
  return _mm512_test_epi32_mask(kept, kept);
}

// A row's running max m and sum l after a key block of max m_new and sum bsum (relative to m_new); its row of O
// is rescaled when m grows.
FASTBERT_TARGET_BF16 FASTBERT_INLINE void update_running(float& m_run, float& l_run, float m_new, float bsum, float* o,
                                                         int64_t dp) {
  if (m_run == -std::numeric_limits<float>::infinity()) {  // first kept block of this row: O and l are still 0
    m_run = m_new;
  } else if (m_run != m_new) {
    const float alpha = std::exp(m_run - m_new);
    l_run *= alpha;
    const __m512 va = _mm512_set1_ps(alpha);
    for (int64_t c = 0; c < dp; c += 16) _mm512_storeu_ps(o + c, _mm512_mul_ps(_mm512_loadu_ps(o + c), va));
    m_run = m_new;
  }
  l_run += bsum;
}

// The softmax step of G rows over one key block of nk keys, their masks already in the fp32 scores (row i at
// S + i * ldS, read only): block max, e = exp(s - m), the running max m / sum l (the row of O rescaled when m
// grows), dropout (G = 1 only), and P = bf16(e) into P + i * ldP, round_up(nk, 16) values (zero past nk), the
// operand of the PV dot products. The same fp32 steps as the kernel's generic loop, without writing the
// probabilities back in fp32. Each row's steps are a chain (max, reduce, exp, reduce), short at head size 32 and
// short rows, so G rows are interleaved for the processor to overlap; the arithmetic of a row does not depend on G.
// Returns false, changing nothing, where G > 1 and a row has kept nothing so far (scores of -inf): the caller then
// goes row by row.
template <int G>
FASTBERT_TARGET_BF16 FASTBERT_INLINE bool softmax_group_dot(const float* S, int64_t ldS, int64_t nk, float* m_run,
                                                            float* l_run, float* O, int64_t dp, uint16_t* P,
                                                            int64_t ldP, const DropoutHash* drop, uint32_t key,
                                                            uint32_t col0) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const __m512 vninf = _mm512_set1_ps(neg_inf);
  const int64_t nkW = round_up(nk, 16);
  __m512 vmax[G];
  for (int i = 0; i < G; ++i) vmax[i] = vninf;
  for (int64_t j = 0; j < nkW; j += 16) {
    const __mmask16 k = tail_mask(nk - j);
    for (int i = 0; i < G; ++i) vmax[i] = _mm512_max_ps(vmax[i], _mm512_mask_loadu_ps(vninf, k, S + i * ldS + j));
  }
  float m_new[G];
  for (int i = 0; i < G; ++i) {
    m_new[i] = std::max(m_run[i], _mm512_reduce_max_ps(vmax[i]));
    if (m_new[i] != neg_inf) continue;
    if (G > 1) return false;
    std::fill(P, P + nkW, uint16_t(0));  // nothing kept so far in this row
    return true;
  }
  __m512 vsum[G];
  for (int i = 0; i < G; ++i) vsum[i] = _mm512_setzero_ps();
  for (int64_t j = 0; j < nkW; j += 16) {
    const __mmask16 k = tail_mask(nk - j);
    for (int i = 0; i < G; ++i) {
      const Vectorized<float> x(_mm512_mask_loadu_ps(vninf, k, S + i * ldS + j));
      const __m512 e = vexp<float>(x - Vectorized<float>(m_new[i]));
      vsum[i] = _mm512_add_ps(vsum[i], e);
      const __mmask16 kept = drop ? k & dropout_keep16(*drop, key, col0 + static_cast<uint32_t>(j)) : k;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(P + i * ldP + j),
                          (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_mov_ps(kept, e)));
    }
  }
  for (int i = 0; i < G; ++i)
    update_running(m_run[i], l_run[i], m_new[i], _mm512_reduce_add_ps(vsum[i]), O + i * dp, dp);
  return true;
}

// The softmax step of one row (s, its running m and l, its row o of O, its P row p), with dropout where drop is set.
FASTBERT_TARGET_BF16 void softmax_row_dot(const float* s, int64_t nk, float& m_run, float& l_run, float* o, int64_t dp,
                                          uint16_t* p, const DropoutHash* drop, uint32_t key, uint32_t col0) {
  softmax_group_dot<1>(s, 0, nk, &m_run, &l_run, o, dp, p, 0, drop, key, col0);
}

// The softmax step of rows 0 .. rows of a block (S rows ldS apart, P rows ldP apart) without mask or dropout, in
// one call, six rows interleaved; the padding rows rows .. rows_r get P = 0.
FASTBERT_TARGET_BF16 void softmax_rows_dot(const float* S, int64_t ldS, int64_t rows, int64_t rows_r, int64_t nk,
                                           float* m_run, float* l_run, float* O, int64_t dp, uint16_t* P, int64_t ldP) {
  constexpr int kGroup = 6;
  int64_t r = 0;
  for (; r + kGroup <= rows; r += kGroup)
    if (!softmax_group_dot<kGroup>(S + r * ldS, ldS, nk, m_run + r, l_run + r, O + r * dp, dp, P + r * ldP, ldP,
                                   nullptr, 0, 0))
      for (int64_t i = r; i < r + kGroup; ++i)
        softmax_group_dot<1>(S + i * ldS, 0, nk, m_run + i, l_run + i, O + i * dp, dp, P + i * ldP, 0, nullptr, 0, 0);
  for (; r < rows; ++r)
    softmax_group_dot<1>(S + r * ldS, 0, nk, m_run + r, l_run + r, O + r * dp, dp, P + r * ldP, 0, nullptr, 0, 0);
  const int64_t nkW = round_up(nk, 16);
  for (; r < rows_r; ++r) std::fill(P + r * ldP, P + r * ldP + nkW, uint16_t(0));
}

// dst[0 .. d) = bf16(o * inv) (o has at least round_up(d, 16) values).
FASTBERT_TARGET_BF16 void store_row_bf16(const float* o, float inv, c10::BFloat16* dst, int64_t d) {
  const __m512 vi = _mm512_set1_ps(inv);
  for (int64_t c = 0; c < d; c += 16) {
    const int64_t m = std::min<int64_t>(16, d - c);
    const __m256i y = (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(o + c), vi));
    _mm256_mask_storeu_epi16(dst + c, m >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << m) - 1), y);
  }
}
#endif  // CPU_CAPABILITY_AVX512

// ---------------------------------------------------------------- the kernel

struct Task { int64_t seq, head, q0, q1; };  // head -1: every head of the rows q0 .. q1

// The longest sequence for tasks of every head (a multiple of kBQ): attention_quant holds such a task's output
// rows, every head, in its scratch until it quantizes them.
constexpr int64_t kAllHeadsRows = 144;

// Block sizes (query rows, keys). BQ is a multiple of kMR; BK a multiple of every NR * W.
constexpr int64_t kBQ = 48;
constexpr int64_t kBK = 256;

// kDot: bfloat16 storage, QK^T and PV as bf16 dot products (AVX-512 build, processor with avx512_bf16).
template <typename scalar_t, bool kDot>
void attention_kernel(const at::Tensor& qkv, const at::Tensor& bias, const AttnParams& P, at::Tensor& out,
                      at::Tensor& lse) {
  using acc = acc_t<scalar_t>;
  using V = Vectorized<acc>;
  constexpr int64_t W = V::size();
  const int64_t T = P.T, nh = P.num_heads, d = P.head_dim, H = P.hidden;
  const int64_t dp = round_up(d, W);
  [[maybe_unused]] const int64_t dq = round_up(d, 32);  // bf16 dot path: a Q / K row in bf16
  [[maybe_unused]] const int64_t d2 = (d + 1) / 2;  // bf16 dot path: pairs of head dims
  const scalar_t* qkv_p = qkv.const_data_ptr<scalar_t>();
  const scalar_t* bias_p = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* out_p = out.defined() ? out.mutable_data_ptr<scalar_t>() : nullptr;  // undefined: attention_quant
  float* lse_p = lse.defined() ? lse.mutable_data_ptr<float>() : nullptr;
  const acc scale = static_cast<acc>(P.scale);
  const acc neg_inf = -std::numeric_limits<acc>::infinity();

  auto seq_start = [&](int64_t b) -> int64_t { return P.cu_seqlens ? P.cu_seqlens[b] : b * P.seqlen; };
  auto seq_len = [&](int64_t b) -> int64_t { return P.cu_seqlens ? P.cu_seqlens[b + 1] - P.cu_seqlens[b] : P.seqlen; };

  // Tasks: one per sequence, covering every head, when the sequences are at most kAllHeadsRows long and there are
  // at least 4 per thread (measured 0-12% faster than one task per head on such batches: fewer, larger tasks,
  // each reading whole qkv rows); otherwise one per (sequence, head), split into query chunks when there are
  // fewer than 4 per thread. attention_quant's rows are quantized by the task that computed them (every head of
  // the row is then in the task's scratch), or, with per-head tasks, row by row after the attention, while the
  // output is still in cache.
  const int64_t nthreads = std::max<int64_t>(1, at::in_parallel_region() ? 1 : at::get_num_threads());
  int64_t nonempty = 0;
  for (int64_t b = 0; b < P.batch; ++b) nonempty += seq_len(b) > 0;
  if (nonempty == 0) return;
  const bool all_heads = P.max_seqlen <= kAllHeadsRows && nonempty >= 4 * nthreads;
  const bool quant_rows = all_heads && P.quant != nullptr;  // a task quantizes its rows from its scratch
  const int64_t base_tasks = nonempty * (all_heads ? 1 : nh);
  int64_t chunk = round_up(std::max<int64_t>(P.max_seqlen, 1), kBQ);
  if (base_tasks < 4 * nthreads) {
    const int64_t split = (4 * nthreads + base_tasks - 1) / base_tasks;
    chunk = std::max<int64_t>(kBQ, round_up((P.max_seqlen + split - 1) / split, kBQ));
  }
  std::vector<Task> tasks;
  for (int64_t b = 0; b < P.batch; ++b) {
    const int64_t n = seq_len(b);
    for (int64_t h = all_heads ? -1 : 0; h < (all_heads ? 0 : nh); ++h)
      for (int64_t q0 = 0; q0 < n; q0 += chunk) tasks.push_back({b, h, q0, std::min(n, q0 + chunk)});
  }
  // Longest work first (cost ~ rows * keys), so the last tasks to start are the short ones.
  std::stable_sort(tasks.begin(), tasks.end(), [&](const Task& x, const Task& y) {
    return (x.q1 - x.q0) * seq_len(x.seq) > (y.q1 - y.q0) * seq_len(y.seq);
  });

  const bool dropout = P.dropout_p > 0;
  const DropoutHash drop = make_dropout_hash(P.dropout_p, P.seed, P.offset);
  const acc out_scale = static_cast<acc>(1.0 / (1.0 - P.dropout_p));

  // K^T leading dimension, plus one cache line: with a power-of-two-ish row stride the d rows of a K^T panel
  // would fall into a few L1 sets and evict each other between the query row groups.
  const int64_t ldk = round_up(std::max<int64_t>(P.max_seqlen, 1), kBK) + 64 / static_cast<int64_t>(sizeof(acc));
  const int64_t q_rows = round_up(chunk, kMR);
  std::atomic<int64_t> next{0};
  const int64_t ntasks = static_cast<int64_t>(tasks.size());

  at::parallel_for(0, std::min(nthreads, ntasks), 1, [&](int64_t tb, int64_t te) {
    for (int64_t tid = tb; tid < te; ++tid) {
      // The bf16 dot path keeps its bf16 tensors in the same regions (each fits: d/2 pairs x ldk for K^T,
      // ldk x dq bf16 for K's rows, V's key pairs and Q) plus P in bf16 (BQ, BK).
      const int64_t sizes[9] = {d * ldk,
                                ldk * dp,
                                ldk * dp,
                                q_rows * dp,
                                kBQ * kBK,
                                kBQ * dp,
                                kDot ? kBQ * kBK / 2 : 0,
                                quant_rows ? q_rows * H : 0,
                                quant_rows ? H : 0};
      int64_t total = 0;
      for (int64_t x : sizes) total += round_up(x, 64);
      ScratchLease lease;
      lease_scratch(lease, total * sizeof(acc));
      acc* base = reinterpret_cast<acc*>(lease.ptr);
      acc* KT = base;  // (d, ldk)    K^T, bias added
      acc* Kr = KT + round_up(sizes[0], 64);  // (ldk, dp)   K rows, bias added (staging)
      acc* Vb = Kr + round_up(sizes[1], 64);  // (ldk, dp)   V, bias added
      acc* Q = Vb + round_up(sizes[2], 64);  // (q_rows, dp) Q * scale, bias added
      acc* S = Q + round_up(sizes[3], 64);  // (BQ, BK)    scores, then probabilities
      acc* O = S + round_up(sizes[4], 64);  // (BQ, dp)    unnormalised output
      [[maybe_unused]] uint16_t* P2 = reinterpret_cast<uint16_t*>(O + round_up(sizes[5], 64));  // (BQ, BK) bf16 P
      acc* after_p2 = O + round_up(sizes[5], 64) + round_up(sizes[6], 64);
      scalar_t* rows_out = reinterpret_cast<scalar_t*>(after_p2);  // every head: (q_rows, H) outputs
      float* quant_row = reinterpret_cast<float*>(after_p2 + round_up(sizes[7], 64));  // every head: (H,) scratch
      acc m_run[kBQ], l_run[kBQ];
      for (int64_t k = next.fetch_add(1); k < ntasks; k = next.fetch_add(1)) {
        const Task& task = tasks[k];
        const int64_t b = task.seq, s0 = seq_start(b), n = seq_len(b);
        const int64_t nW = round_up(n, W);
        for (int64_t h = std::max<int64_t>(task.head, 0); h < (task.head < 0 ? nh : task.head + 1); ++h) {
          // Stage K (bias added), V and Q * scale of head h for this sequence / query chunk, prefetching the
          // rows ahead (the rows are 3H apart: too far for the hardware prefetcher to follow on its own).
          const scalar_t* qb = bias_p ? bias_p + h * d : nullptr;
          const scalar_t* kb = bias_p ? bias_p + H + h * d : nullptr;
          const scalar_t* vb = bias_p ? bias_p + 2 * H + h * d : nullptr;
          const int64_t rows_all = task.q1 - task.q0;
#ifdef FASTBERT_BF16_DOT
          if constexpr (kDot) {
            // bf16: Q * scale and K rows (dq = d rounded up to 32), V as key pairs; K^T as d/2 rows of bf16 pairs.
            uint16_t* Q2 = reinterpret_cast<uint16_t*>(Q);
            uint16_t* K2 = reinterpret_cast<uint16_t*>(Kr);
            uint16_t* V2 = reinterpret_cast<uint16_t*>(Vb);
            stage_head_bf16(qkv_p + s0 * 3 * H + h * d, H, n, task.q0, task.q1, qb, scale, Q2, K2, V2, d, dq, dp);
            std::fill(Q2 + rows_all * dq, Q2 + round_up(rows_all, kMR) * dq, uint16_t(0));
            std::fill(K2 + n * dq, K2 + nW * dq, uint16_t(0));
            // K^T as pairs: (nW, dq/2) uint32 -> (d2, nW); the transpose only moves 32-bit words.
            at::vec::transpose_mxn<float>(reinterpret_cast<const float*>(K2), dq / 2, KT, ldk, static_cast<int>(nW),
                                          static_cast<int>(d2));
          } else
#endif
          {
            for (int64_t j = 0; j < n; ++j) {
              const int64_t a = j + kAheadKeys;
              if (a < n) prefetch_key(qkv_p + (s0 + a) * 3 * H + h * d, H, d, a >= task.q0 && a < task.q1);
              const scalar_t* row = qkv_p + (s0 + j) * 3 * H + h * d;
              if (j >= task.q0 && j < task.q1) stage_row(row, qb, scale, true, Q + (j - task.q0) * dp, d, dp);
              stage_row(row + H, kb, acc(1), false, Kr + j * dp, d, dp);
              stage_row(row + 2 * H, vb, acc(1), false, Vb + j * dp, d, dp);
            }
            std::fill(Q + rows_all * dp, Q + round_up(rows_all, kMR) * dp, acc(0));
            std::fill(Kr + n * dp, Kr + nW * dp, acc(0));
            // K^T: (nW, d) -> (d, nW), 16 x 16 register tiles on AVX-512 (float), scalar elsewhere.
            at::vec::transpose_mxn<acc>(Kr, dp, KT, ldk, static_cast<int>(nW), static_cast<int>(d));
          }

          for (int64_t i0 = task.q0; i0 < task.q1; i0 += kBQ) {
            const int64_t rows = std::min(kBQ, task.q1 - i0);
            const int64_t rows_r = round_up(rows, kMR);
            [[maybe_unused]] const acc* Qb = Q + (i0 - task.q0) * dp;
            for (int64_t r = 0; r < rows; ++r) {
              m_run[r] = neg_inf;
              l_run[r] = 0;
            }
            std::fill(O, O + rows_r * dp, acc(0));
            for (int64_t j0 = 0; j0 < n; j0 += kBK) {
              const int64_t nk = std::min(kBK, n - j0);
              const int64_t nkW = round_up(nk, W);
              // S = (Q * scale) K^T over this key block: (rows_r, nkW).
#ifdef FASTBERT_BF16_DOT
              if constexpr (kDot) {
                block_dot(rows_r, nkW, d2, reinterpret_cast<const uint32_t*>(Q) + (i0 - task.q0) * (dq / 2), dq / 2,
                          reinterpret_cast<const uint32_t*>(KT) + j0, ldk, S, kBK, false);
              } else
#endif
              {
                block_gemm<acc>(rows_r, nkW, d, Qb, dp, KT + j0, ldk, S, kBK, false);
              }
              bool softmax_done = false;  // the bf16 dot path without mask or dropout: every row in one call
#ifdef FASTBERT_BF16_DOT
              if constexpr (kDot) {
                if (P.mask_kind == 0 && !dropout) {
                  softmax_rows_dot(S, kBK, rows, rows_r, nk, m_run, l_run, O, dp, P2, kBK);
                  softmax_done = true;
                }
              }
#endif
              for (int64_t r = 0; r < rows_r && !softmax_done; ++r) {
                acc* s = S + r * kBK;
                if (r >= rows) {  // padding rows: P = 0
#ifdef FASTBERT_BF16_DOT
                  if constexpr (kDot) {
                    std::fill(P2 + r * kBK, P2 + r * kBK + nkW, uint16_t(0));
                    continue;
                  }
#endif
                  std::fill(s, s + nk, acc(0));
                  continue;
                }
                const int64_t i = i0 + r;  // query index within the sequence
                if (P.mask_kind != 0) {
                  const int64_t* ms = P.mask_stride;
                  const int64_t moff = b * ms[0] + h * ms[1] + i * ms[2] + j0 * ms[3];
                  if (P.mask_kind == 1) {
                    const bool* mp = static_cast<const bool*>(P.mask) + moff;
                    for (int64_t j = 0; j < nk; ++j) s[j] = mp[j * ms[3]] ? s[j] : neg_inf;
                  } else {
                    const acc* mp = static_cast<const acc*>(P.mask) + moff;
                    if (ms[3] == 1) {
                      for (int64_t j = 0; j < nk; ++j) s[j] += mp[j];
                    } else {
                      for (int64_t j = 0; j < nk; ++j) s[j] += mp[j * ms[3]];
                    }
                  }
                }
                const uint32_t key =  // the row's dropout key (csrc/dropout_hash.h)
                    dropout ? drop.row_key(
                                  static_cast<uint64_t>(P.cu_seqlens ? h * T + s0 + i : (b * nh + h) * P.seqlen + i))
                            : 0;
#ifdef FASTBERT_BF16_DOT
                if constexpr (kDot) {
                  softmax_row_dot(s, nk, m_run[r], l_run[r], O + r * dp, dp, P2 + r * kBK, dropout ? &drop : nullptr,
                                  key, static_cast<uint32_t>(j0));
                  continue;
                }
#endif
                for (int64_t j = nk; j < nkW; ++j) s[j] = neg_inf;
                V vmax(neg_inf);
                for (int64_t j = 0; j < nkW; j += W) vmax = at::vec::maximum(vmax, V::loadu(s + j));
                const acc bmax =
                    at::vec::vec_reduce_all<acc>([](const V& x, const V& y) { return at::vec::maximum(x, y); }, vmax);
                const acc m_new = std::max(m_run[r], bmax);
                if (m_new == neg_inf) {  // nothing kept so far in this row
                  std::fill(s, s + nkW, acc(0));
                  continue;
                }
                const V vm(m_new);
                V vsum(acc(0));
                for (int64_t j = 0; j < nkW; j += W) {
                  V e = vexp<acc>(V::loadu(s + j) - vm);
                  e.store(s + j);
                  vsum = vsum + e;
                }
                const acc bsum = at::vec::vec_reduce_all<acc>([](const V& x, const V& y) { return x + y; }, vsum);
                if (m_run[r] == neg_inf) {  // first kept block of this row: O and l are still 0
                  m_run[r] = m_new;
                } else if (m_run[r] != m_new) {
                  const acc alpha = std::exp(m_run[r] - m_new);
                  l_run[r] *= alpha;
                  const V va(alpha);
                  acc* o = O + r * dp;
                  for (int64_t c = 0; c < dp; c += W) (V::loadu(o + c) * va).store(o + c);
                  m_run[r] = m_new;
                }
                l_run[r] += bsum;
                if (dropout) {
                  for (int64_t j = 0; j < nk; ++j) s[j] = drop.keep(key, static_cast<uint32_t>(j0 + j)) ? s[j] : acc(0);
                }
              }
              // O += P V over this key block: (rows_r, dp).
#ifdef FASTBERT_BF16_DOT
              if constexpr (kDot) {
                // over key pairs: P2 rows as uint32 pairs, V's pairs of this block (dp uint32 each)
                block_dot(rows_r, dp, (nk + 1) / 2, reinterpret_cast<const uint32_t*>(P2), kBK / 2,
                          reinterpret_cast<const uint32_t*>(Vb) + (j0 / 2) * dp, dp, O, dp, true);
              } else
#endif
              {
                block_gemm<acc>(rows_r, dp, nk, S, kBK, Vb + j0 * dp, dp, O, dp, true);
              }
            }
            // out = O / (l (1 - p)); lse = m + log l (the logs a vector at a time: a scalar log per row was 3% of
            // the bf16 kernel at head size 32).
            acc lse_rows[kBQ];
            if (lse_p) {
              for (int64_t r = 0; r < rows; r += W) {
                const int64_t m = std::min(W, rows - r);
                (V::loadu(m_run + r, m) + V::loadu(l_run + r, m).log()).store(lse_rows + r, m);
              }
            }
            for (int64_t r = 0; r < rows; ++r) {
              const int64_t i = i0 + r;
              const int64_t row = P.cu_seqlens ? h * T + s0 + i : (b * nh + h) * P.seqlen + i;
              scalar_t* od = quant_rows ? rows_out + (i - task.q0) * H + h * d : out_p + (s0 + i) * H + h * d;
              const acc* o = O + r * dp;
              if (m_run[r] == neg_inf) {
                for (int64_t c = 0; c < d; ++c) od[c] = scalar_t(0);
                if (lse_p) lse_p[row] = -std::numeric_limits<float>::infinity();
                continue;
              }
              const acc inv = out_scale / l_run[r];
              if (lse_p) lse_p[row] = static_cast<float>(lse_rows[r]);
#ifdef FASTBERT_BF16_DOT
              if constexpr (kDot) {
                store_row_bf16(o, inv, od, d);
                continue;
              }
#endif
              const V vinv(inv);
              int64_t c = 0;
              for (; c + W <= d; c += W) store_acc(od + c, V::loadu(o + c) * vinv);
              if (c < d) store_acc(od + c, V::loadu(o + c) * vinv, d - c);
            }
          }
        }  // heads
        if constexpr (std::is_same_v<acc, float>) {
          // Every head of rows q0 .. q1 is in rows_out, in the output dtype: quantize each row as quantize_rows would.
          for (int64_t r = 0; quant_rows && r < task.q1 - task.q0; ++r) {
            const scalar_t* xr = rows_out + r * H;
            quantize_row([=](int64_t c, int64_t m) { return FVec(load_acc(xr + c, m)); }, P.quant_smooth, quant_row,
                         *P.quant, s0 + task.q0 + r);
          }
        }
      }
    }
  });
  if constexpr (std::is_same_v<acc, float>) {
    if (P.quant != nullptr && !all_heads) {  // the output is in out: quantize its rows
      at::parallel_for(0, T, row_grain(H), [&](int64_t begin, int64_t end) {
        ScratchRow s(H);
        for (int64_t r = begin; r < end; ++r) {
          const scalar_t* xr = out_p + r * H;
          quantize_row([=](int64_t c, int64_t m) { return FVec(load_acc(xr + c, m)); }, P.quant_smooth, s.p, *P.quant,
                       r);
        }
      });
    }
  }
}

void attention_forward(const at::Tensor& qkv, const at::Tensor& bias, const AttnParams& P, at::Tensor& out,
                       at::Tensor& lse) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, qkv.scalar_type(), "attention", [&] {
#ifdef FASTBERT_BF16_DOT
    if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
      if (P.bf16_dot && bf16_dot_enabled()) return attention_kernel<scalar_t, true>(qkv, bias, P, out, lse);
    }
#endif
    attention_kernel<scalar_t, false>(qkv, bias, P, out, lse);
  });
}

}  // namespace CPU_CAPABILITY

#ifdef CPU_CAPABILITY_DEFAULT
FASTBERT_CPU_DECLARE(void attention_forward(const at::Tensor&, const at::Tensor&, const AttnParams&, at::Tensor&,
                                            at::Tensor&))

namespace {

// Whether autograd records this call (csrc/autograd.cpp calls the kernel with the tensors that require grad).
bool records_grad(const at::Tensor& qkv, const std::optional<at::Tensor>& qkv_bias) {
  return qkv.requires_grad() || (qkv_bias.has_value() && qkv_bias->defined() && qkv_bias->requires_grad());
}

at::Tensor bias_or_undefined(const std::optional<at::Tensor>& qkv_bias) {
  return qkv_bias.has_value() && qkv_bias->defined() ? qkv_bias->contiguous() : at::Tensor();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& qkv, const std::optional<at::Tensor>& qkv_bias,
                                                 const at::Tensor& cu_seqlens, int64_t max_seqlen, int64_t num_heads,
                                                 double scale, double dropout_p, int64_t seed, int64_t offset) {
  TORCH_CHECK(qkv.dim() == 2, "attention: qkv must have shape (T, 3 * hidden), got ", qkv.sizes());
  const int64_t d = check_attention_args("attention", qkv, qkv_bias, num_heads, dropout_p);
  const int64_t T = qkv.size(0);
  const int64_t longest = check_cu_seqlens("attention", cu_seqlens, max_seqlen, T);
  auto cu = cu_seqlens.contiguous();
  const int32_t* cp = cu.const_data_ptr<int32_t>();
  const int64_t B = cu.size(0) - 1;
  const int64_t H = qkv.size(1) / 3;
  auto q = qkv.contiguous();
  auto bias = bias_or_undefined(qkv_bias);
  auto out = at::empty({T, H}, q.options());
  auto lse = at::empty({num_heads, T}, q.options().dtype(at::kFloat));
  AttnParams P;
  P.T = T;
  P.num_heads = num_heads;
  P.head_dim = d;
  P.hidden = H;
  P.batch = B;
  P.cu_seqlens = cp;
  P.max_seqlen = longest;
  P.scale = scale;
  P.dropout_p = dropout_p;
  P.seed = seed;
  P.offset = offset;
  P.bf16_dot = !records_grad(qkv, qkv_bias);
  lse.fill_(-std::numeric_limits<float>::infinity());  // rows of empty sequences stay -inf
  if (T > 0) FASTBERT_CPU_DISPATCH(attention_forward, q, bias, P, out, lse);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> attention_masked_cpu(const at::Tensor& qkv,
                                                        const std::optional<at::Tensor>& qkv_bias,
                                                        const at::Tensor& mask, int64_t num_heads, double scale,
                                                        double dropout_p, int64_t seed, int64_t offset) {
  TORCH_CHECK(qkv.dim() == 3, "attention_masked: qkv must have shape (batch, seqlen, 3 * hidden), got ", qkv.sizes());
  const int64_t d = check_attention_args("attention_masked", qkv, qkv_bias, num_heads, dropout_p);
  const int64_t B = qkv.size(0), L = qkv.size(1), H = qkv.size(2) / 3;
  check_attention_mask("attention_masked", mask, B, num_heads, L);
  const at::Tensor m = expanded_attention_mask(mask, qkv.scalar_type(), B, num_heads, L);

  auto q = qkv.contiguous();
  auto bias = bias_or_undefined(qkv_bias);
  auto out = at::empty({B, L, H}, q.options());
  auto lse = at::empty({B, num_heads, L}, q.options().dtype(at::kFloat));
  AttnParams P;
  P.T = B * L;
  P.num_heads = num_heads;
  P.head_dim = d;
  P.hidden = H;
  P.batch = B;
  P.seqlen = L;
  P.max_seqlen = L;
  P.scale = scale;
  P.dropout_p = dropout_p;
  P.seed = seed;
  P.offset = offset;
  P.bf16_dot = !records_grad(qkv, qkv_bias);
  P.mask_kind = mask.scalar_type() == at::kBool ? 1 : 2;
  P.mask = m.const_data_ptr();
  for (int i = 0; i < 4; ++i) P.mask_stride[i] = m.stride(i);
  if (B * L > 0) FASTBERT_CPU_DISPATCH(attention_forward, q, bias, P, out, lse);
  return {out, lse};
}

// attention without lse, its output rows quantized for the int8 GEMM that reads them (quant.h's row rule): no
// float output is written and read back.
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_quant_cpu(
    const at::Tensor& qkv, const std::optional<at::Tensor>& qkv_bias, const at::Tensor& cu_seqlens, int64_t max_seqlen,
    int64_t num_heads, double scale, const std::optional<at::Tensor>& smooth, bool asymmetric) {
  TORCH_CHECK(qkv.dim() == 2, "attention_quant: qkv must have shape (T, 3 * hidden), got ", qkv.sizes());
  TORCH_CHECK(qkv.scalar_type() == at::kFloat || qkv.scalar_type() == at::kBFloat16,
              "attention_quant: qkv must be float32 or bfloat16, got ", qkv.scalar_type());
  const int64_t d = check_attention_args("attention_quant", qkv, qkv_bias, num_heads, 0.0);
  const int64_t T = qkv.size(0);
  const int64_t longest = check_cu_seqlens("attention_quant", cu_seqlens, max_seqlen, T);
  const int64_t H = qkv.size(1) / 3;
  check_smooth("attention_quant", smooth, H, "hidden");
  auto cu = cu_seqlens.contiguous();
  auto q = qkv.contiguous();
  auto bias = bias_or_undefined(qkv_bias);
  auto codes = at::empty({T, H}, q.options().dtype(at::kChar));
  auto row_scale = at::empty({T}, q.options().dtype(at::kFloat));
  auto shift = shift_output(q, T, asymmetric);
  at::Tensor smooth_keep;
  const QuantOut out{codes.mutable_data_ptr<int8_t>(), row_scale.mutable_data_ptr<float>(),
                     asymmetric ? shift.mutable_data_ptr<float>() : nullptr, H};
  AttnParams P;
  P.T = T;
  P.num_heads = num_heads;
  P.head_dim = d;
  P.hidden = H;
  P.batch = cu.size(0) - 1;
  P.cu_seqlens = cu.const_data_ptr<int32_t>();
  P.max_seqlen = longest;
  P.scale = scale;
  P.quant = &out;
  P.quant_smooth = optional_ptr(smooth, smooth_keep);
  // Written only where the kernel quantizes after the attention (long or few sequences); memory is not touched
  // otherwise.
  auto out_rows = at::empty({T, H}, q.options());
  at::Tensor no_lse;
  if (T > 0) FASTBERT_CPU_DISPATCH(attention_forward, q, bias, P, out_rows, no_lse);
  return {codes, row_scale, shift};
}

TORCH_LIBRARY_IMPL(fastbert, CPU, m) {
  m.impl("attention", &attention_cpu);
  m.impl("attention_masked", &attention_masked_cpu);
  m.impl("attention_quant", &attention_quant_cpu);
}
#endif

}  // namespace fastbert::cpu
