// attention kernel: softmax(Q K^T * scale [+ mask]) V per sequence and head, streaming over key blocks.
//
// Serves both ops: `attention` (packed ragged batch, sequence b = rows cu_seqlens[b] .. cu_seqlens[b+1] of
// the (T, 3H) QKV GEMM output) and `attention_masked` (padded (B, L, 3H) batch plus an additive fp32 mask
// broadcast to (B, nh, L, L) by strides). Q, K and V are read straight from the GEMM output with the QKV bias
// added on load: no split/transpose copies, no (B, nh, L, L) scores tensor.
//
// Decomposition: one block of 128 threads per (block of queries, head, sequence); blocks past a sequence's
// end exit at once. SUB = DMAX / 16 consecutive lanes (4 for head dims <= 64, 8 up to 128) own one query row,
// so a block holds 128 / SUB rows (32 or 16); each lane holds 16 of the row's head dims (columns sub,
// sub + SUB, ...) of q and of the output accumulator in registers (no spills at 128 dims). The block
// walks the keys kBc = 32 at a time: it stages K and V of the key block (bias added, fp32) in shared memory,
// each thread forms partial dot products for the 32 keys over its columns, log2(SUB) xor-shuffles complete them,
// and an online softmax (running max m, running sum l, accumulator rescaled by exp(m_old - m_new)) folds the
// block in, so every thread of a row holds every probability and needs no shared P tile. Rows whose running
// max is still -inf (fully masked so far) use 0 as the max, so they add nothing and give lse = -inf, out = 0.
// Dropout multiplies the probabilities in the accumulator by keep / (1 - p) with the counter-based mask of
// fastbert.ops.reference (l keeps the undropped sum, as the reference normalises before dropping).
// Outputs: out in the storage dtype, lse = m + log(l) (fp32, natural log) for the backward.
// Arithmetic is fp32 FMA (no tensor cores), DMAX = 64 or 128 picks the register budget for head dims. This kernel
// serves fp32, and fp16/bf16 below sm_80; attention_mma.cuh is the tensor-core kernel for fp16/bf16 on sm_80+.
#pragma once
#include "cuda/common.cuh"

namespace fastbert::cuda {

constexpr int kAttnThreads = 128;
constexpr int kBc = 32;        // keys per shared-memory block
constexpr int kAttnCols = 16;  // head dims per lane
constexpr int kChunk = 16;     // keys scored at a time

// Lanes per query row and query rows per block for head dims up to DMAX.
FB_HOST_DEVICE constexpr int attention_sub(int dmax) { return dmax / kAttnCols; }
FB_HOST_DEVICE constexpr int attention_rows(int dmax) { return kAttnThreads / attention_sub(dmax); }
// The DMAX (64 or 128) the launcher instantiates for head dim d.
FB_HOST_DEVICE constexpr int attention_dmax(int64_t d) { return d <= 64 ? 64 : 128; }

// What the forward and the backward kernels both read: the QKV GEMM output and its bias, the batch's layout
// (packed or padded), the heads, the scale, the mask and the dropout.
template <typename T>
struct AttentionInputs {
  const T* qkv;               // packed (T, 3H) or padded (B, L, 3H)
  const T* bias;              // (3H,) or nullptr
  const int32_t* cu_seqlens;  // (B+1,) for the packed op, nullptr for the padded one
  int64_t B;                  // sequences
  int64_t total;              // T (packed) ; B * L (padded)
  int64_t L;                  // padded sequence length (padded op only)
  int64_t max_seqlen;         // packed: bound on every sequence length (checked on the device); padded: L
  int H, nh, d;
  float scale;
  const float* mask;          // padded op: additive mask, element (b, h, i, j) at b*ms_b + h*ms_h + i*ms_i + j*ms_j
  int64_t ms_b, ms_h, ms_i, ms_j;
  DropoutParams dropout;
  bool vec;                   // d % (16 / sizeof(T)) == 0 and qkv, bias 16-byte aligned (backward: grad_out too)
};

template <typename T>
struct AttentionParams : AttentionInputs<T> {
  T* out;      // (T, H) or (B, L, H)
  float* lse;  // (nh, T) or (B, nh, L)
};

FB_HOST_DEVICE int64_t attention_smem_bytes(int64_t d) { return 2 * kBc * d * int64_t(sizeof(float)); }

// The rows of sequence b = blockIdx.z: first row `start` of the (T, 3H) / (B * L, 3H) rows and length `n`
// (grid (row blocks, nh, B)); the packed op's cu_seqlens are checked on the device by one thread. P is the
// params of the forward or the backward kernels (cu_seqlens, total, max_seqlen, L).
template <typename P>
FB_DEVICE void attention_sequence(const P& p, int64_t* start, int64_t* n) {
  const int64_t b = blockIdx.z;
  if (p.cu_seqlens) {
    *start = p.cu_seqlens[b];
    *n = p.cu_seqlens[b + 1] - *start;
    if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) {
      FB_KERNEL_ASSERT(*n >= 0 && *n <= p.max_seqlen && *start + *n <= p.total);
      if (b == gridDim.z - 1) FB_KERNEL_ASSERT(*start + *n == p.total);  // cu_seqlens[B] == T
    }
  } else {
    *start = b * p.L;
    *n = p.L;
  }
}

// The lse / dropout row of query i of head h in sequence b (see DropoutParams' `row`).
template <typename P>
FB_DEVICE int64_t attention_row(const P& p, int64_t b, int h, int64_t start, int64_t i) {
  return p.cu_seqlens ? int64_t(h) * p.total + start + i : (b * p.nh + h) * p.L + i;
}

// s[j] = x . tile[j0 + j] for kChunkRows rows of a (rows, d) fp32 tile: each lane's partial sum over its
// kAttnCols columns (sub, sub + kSub, ...), completed over the row's kSub lanes by xor-shuffles (every lane
// of the warp takes part). Shared by the forward and backward FMA kernels.
template <int kSub, int kChunkRows>
FB_DEVICE void chunk_dots(const float (&x)[kAttnCols], const float* tile, int j0, int d, int sub,
                          float (&s)[kChunkRows]) {
#pragma unroll
  for (int j = 0; j < kChunkRows; ++j) {
    float acc = 0.f;
#pragma unroll
    for (int m = 0; m < kAttnCols; ++m) {
      const int c = sub + kSub * m;
      if (c < d) acc = fmaf(x[m], tile[(j0 + j) * d + c], acc);
    }
    s[j] = acc;
  }
#pragma unroll
  for (int j = 0; j < kChunkRows; ++j)
#pragma unroll
    for (int o = 1; o < kSub; o <<= 1) s[j] += __shfl_xor_sync(kFullMask, s[j], o);
}

// Turns the dot products s[j] of keys key0 + j into scores: times scale, plus the row's additive mask (if any),
// -inf past the sequence end n. Returns their maximum. Shared by the forward and backward FMA kernels.
template <int kChunkRows>
FB_DEVICE float chunk_scores(float (&s)[kChunkRows], int64_t key0, int64_t n, float scale, const float* mask_row,
                             int64_t ms_j) {
  float tile_max = -INFINITY;
#pragma unroll
  for (int j = 0; j < kChunkRows; ++j) {
    const int64_t key = key0 + j;
    float v = -INFINITY;
    if (key < n) {
      v = s[j] * scale;
      if (mask_row) v += mask_row[key * ms_j];
    }
    s[j] = v;
    tile_max = fmaxf(tile_max, v);
  }
  return tile_max;
}

template <typename T, int DMAX>
__global__ void __launch_bounds__(kAttnThreads) attention_kernel(AttentionParams<T> p) {
  constexpr int kSub = attention_sub(DMAX), kBr = attention_rows(DMAX), C = kAttnCols;
  static_assert(kSub * C == DMAX && kWarp % kSub == 0, "bad DMAX");
  const int64_t b = blockIdx.z;
  const int h = blockIdx.y;
  int64_t start, n;
  attention_sequence(p, &start, &n);
  const int64_t q0 = int64_t(blockIdx.x) * kBr;
  if (q0 >= n) return;  // uniform over the block

  const int t = threadIdx.x, r = t / kSub, sub = t % kSub;
  const int64_t i = q0 + r;  // query index in the sequence
  const bool valid = i < n;
  const int d = p.d, H = p.H;
  const int64_t stride = 3 * int64_t(H);
  const int hd = h * d;

  float q[C], o[C];
#pragma unroll
  for (int m = 0; m < C; ++m) {
    const int c = sub + kSub * m;
    float v = 0.f;
    if (valid && c < d) {
      v = to_float(p.qkv[(start + i) * stride + hd + c]);
      if (p.bias) v += to_float(p.bias[hd + c]);
    }
    q[m] = v;
    o[m] = 0.f;
  }
  const int64_t lse_row = attention_row(p, b, h, start, i);
  const float* mask_row = (p.mask && valid) ? p.mask + b * p.ms_b + h * p.ms_h + i * p.ms_i : nullptr;

  float* Ks = dynamic_smem<float>();  // (kBc, d)
  float* Vs = Ks + kBc * d;            // (kBc, d)
  float m_run = -INFINITY, l_run = 0.f;

  for (int64_t k0 = 0; k0 < n; k0 += kBc) {
    __syncthreads();  // the previous key block is no longer read
    if (p.vec) {
      constexpr int nv = Vec16<T>::n;
      const int per_row = d / nv;
      for (int e = t; e < kBc * per_row; e += kAttnThreads) {
        const int j = e / per_row, c = (e % per_row) * nv;
        const int64_t key = k0 + j;
        if (key < n) {
          const T* base = p.qkv + (start + key) * stride + hd + c;
          const Vec16<T> kv = load16(base + H), vv = load16(base + 2 * H);
          Vec16<T> kb, vb;
          if (p.bias) {
            kb = load16(p.bias + H + hd + c);
            vb = load16(p.bias + 2 * H + hd + c);
          }
#pragma unroll
          for (int u = 0; u < nv; ++u) {
            Ks[j * d + c + u] = to_float(kv.v[u]) + (p.bias ? to_float(kb.v[u]) : 0.f);
            Vs[j * d + c + u] = to_float(vv.v[u]) + (p.bias ? to_float(vb.v[u]) : 0.f);
          }
        } else {
#pragma unroll
          for (int u = 0; u < nv; ++u) {
            Ks[j * d + c + u] = 0.f;
            Vs[j * d + c + u] = 0.f;
          }
        }
      }
    } else {
      for (int e = t; e < kBc * d; e += kAttnThreads) {
        const int j = e / d, c = e % d;
        const int64_t key = k0 + j;
        float kv = 0.f, vv = 0.f;
        if (key < n) {
          const T* base = p.qkv + (start + key) * stride + hd + c;
          kv = to_float(base[H]);
          vv = to_float(base[2 * H]);
          if (p.bias) {
            kv += to_float(p.bias[H + hd + c]);
            vv += to_float(p.bias[2 * H + hd + c]);
          }
        }
        Ks[j * d + c] = kv;
        Vs[j * d + c] = vv;
      }
    }
    __syncthreads();

    // The staged keys in chunks of kChunk: fewer live scores, no register spills at 128 head dims.
    for (int j0 = 0; j0 < kBc; j0 += kChunk) {
      float s[kChunk];
      chunk_dots<kSub>(q, Ks, j0, d, sub, s);
      const float tile_max = chunk_scores(s, k0 + j0, n, p.scale, mask_row, p.ms_j);
      const float m_new = fmaxf(m_run, tile_max);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = expf(m_run - m_use);
      l_run *= alpha;
#pragma unroll
      for (int m = 0; m < C; ++m) o[m] *= alpha;
#pragma unroll
      for (int j = 0; j < kChunk; ++j) {
        const float pj = expf(s[j] - m_use);
        l_run += pj;
        float pk = pj;
        if (p.dropout.hash.threshold != 0 && !dropout_keep(p.dropout, uint64_t(lse_row), uint32_t(k0 + j0 + j)))
          pk = 0.f;
#pragma unroll
        for (int m = 0; m < C; ++m) {
          const int c = sub + kSub * m;
          if (c < d) o[m] = fmaf(pk, Vs[(j0 + j) * d + c], o[m]);
        }
      }
      m_run = m_new;
    }
  }

  if (valid) {
    const float inv = l_run > 0.f ? p.dropout.keep_scale / l_run : 0.f;
    T* out_row = p.out + (start + i) * int64_t(H) + hd;
#pragma unroll
    for (int m = 0; m < C; ++m) {
      const int c = sub + kSub * m;
      if (c < d) out_row[c] = from_float<T>(o[m] * inv);
    }
    if (sub == 0) p.lse[lse_row] = l_run > 0.f ? m_run + logf(l_run) : -INFINITY;
  }
}

// The inputs (host side, shared by the .cu launchers and tests/cuda_harness): the caller's pointers and sizes
// (packed: cu_seqlens, B, total = T, max_seqlen; padded: B, L, the mask and its strides; both: H, nh, scale,
// dropout), plus the head dim d, for the padded op total = B * L and max_seqlen = L, and the 16-byte staging.
template <typename T>
inline AttentionInputs<T> attention_inputs(AttentionInputs<T> in) {
  in.d = in.H / in.nh;
  if (!in.cu_seqlens) {
    in.total = in.B * in.L;
    in.max_seqlen = in.L;
  }
  in.vec = in.d % Vec16<T>::n == 0 && aligned16(in.qkv) && (!in.bias || aligned16(in.bias));
  return in;
}

}  // namespace fastbert::cuda
