// attention on tensor cores, fp16 / bf16 on sm_80 and newer: the same op as attention.cuh (both the packed
// ragged and the padded masked variant, AttentionParams), organised as FlashAttention-2.
//
// Why a second kernel: the fp32-FMA kernel reads K and V from shared memory once per multiply-add and reached
// ~105 GB/s (4 TFLOP/s) on an H100 at bert-base shapes; the two products S = Q K^T and O = P V are matrix
// products and belong on the tensor cores (mma.sync m16n8k16, csrc/cuda/mma.cuh), with fp32 accumulation.
//
// Decomposition: one block of 4 warps per (64 queries, head, sequence); each warp owns 16 query rows for the
// whole pass. The block stages its Q tile (bias added, rounded to T) in shared memory once and each warp keeps
// its rows as A fragments in registers (ldmatrix). Then, 64 keys at a time: the block stages K and V row-major
// with the bias added (16-byte stores); each warp forms its 16 x 64 scores with DMAX/16 x 8 mma's (K's B
// fragments by ldmatrix, V's by ldmatrix.trans), applies scale, mask and sequence end in fp32, folds them into the
// running max / sum (online softmax, the row statistics shared by the 4 lanes of a quad through two xor-shuffles), and,
// because the score accumulator's layout is the A-fragment layout of P, converts the probabilities to T in registers
// and multiplies them by V with no trip through shared memory. Rows and columns past the sequence or head end are zero
// in shared memory and -inf in the scores, so any length and any head size up to 128 work (DMAX = 32, 64 or 128, padded
// up). Outputs, lse, fully-masked rows (out 0, lse -inf) and the dropout mask are those of attention.cuh. Shared-memory
// rows are padded by 8 elements so the 8 rows an ldmatrix phase reads fall in different banks.
#pragma once
#include "cuda/attention.cuh"
#include "cuda/mma.cuh"

namespace fastbert::cuda {

constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = kMmaWarps * kWarp;
constexpr int kMmaRows = 16 * kMmaWarps;  // query rows per block (= keys per shared-memory tile)
constexpr int kMmaKeys = kMmaRows;
constexpr int kMmaPad = 8;  // extra elements per shared-memory row (conflict-free ldmatrix)
constexpr float kLog2e = 1.4426950408889634f;

// The DMAX (32, 64 or 128) the launcher instantiates for head dim d.
FB_HOST_DEVICE constexpr int attention_mma_dmax(int64_t d) { return d <= 32 ? 32 : d <= 64 ? 64 : 128; }

// Dynamic shared memory: the Q-then-K tile and the V tile, kMmaKeys x (DMAX + pad) 16-bit elements each.
FB_HOST_DEVICE int64_t attention_mma_smem_bytes(int64_t d) {
  return 2 * int64_t(kMmaKeys) * (attention_mma_dmax(d) + kMmaPad) * 2;
}

// Rows r0 .. r0 + kMmaKeys of the sequence, columns [part * H + h * d, + d) of the QKV rows, plus the bias,
// rounded to T, row-major into dst (row stride DMAX + pad). Rows past the sequence end and columns past d are
// zero.
template <typename T, int DMAX>
FB_DEVICE void mma_stage_tile(T* dst, const AttentionParams<T>& p, int64_t start, int64_t n, int64_t r0, int part,
                              int h) {
  constexpr int S = DMAX + kMmaPad;
  const int64_t stride = 3 * int64_t(p.H);
  const int col0 = part * p.H + h * p.d;
  if (p.vec) {  // d % 8 == 0, 16-byte aligned rows: 8 elements per load and store
    constexpr int nv = Vec16<T>::n, per_row = DMAX / nv;
    for (int e = threadIdx.x; e < kMmaKeys * per_row; e += kMmaThreads) {
      const int r = e / per_row, c = (e % per_row) * nv;
      Vec16<T> v;
      if (r0 + r < n && c < p.d) {
        v = load16(p.qkv + (start + r0 + r) * stride + col0 + c);
        if (p.bias) {
          const Vec16<T> b = load16(p.bias + col0 + c);
#pragma unroll
          for (int u = 0; u < nv; ++u) v.v[u] = from_float<T>(to_float(v.v[u]) + to_float(b.v[u]));
        }
      } else {
#pragma unroll
        for (int u = 0; u < nv; ++u) v.v[u] = from_float<T>(0.f);
      }
      store16(dst + r * S + c, v);
    }
  } else {
    for (int e = threadIdx.x; e < kMmaKeys * DMAX; e += kMmaThreads) {
      const int r = e / DMAX, c = e % DMAX;
      float v = 0.f;
      if (r0 + r < n && c < p.d) {
        v = to_float(p.qkv[(start + r0 + r) * stride + col0 + c]);
        if (p.bias) v += to_float(p.bias[col0 + c]);
      }
      dst[r * S + c] = from_float<T>(v);
    }
  }
}

template <typename T, int DMAX>
__global__ void __launch_bounds__(kMmaThreads) attention_mma_kernel(AttentionParams<T> p) {
  constexpr int S = DMAX + kMmaPad, KD = DMAX / 16, ND = DMAX / 8, NK = kMmaKeys / 8;
  const int64_t b = blockIdx.z;
  const int h = blockIdx.y;
  int64_t start, n;
  attention_sequence(p, &start, &n);
  const int64_t q0 = int64_t(blockIdx.x) * kMmaRows;
  if (q0 >= n) return;  // uniform over the block

  T* Ks = dynamic_smem<T>();  // (kMmaKeys, S): the Q tile first, then each K tile
  T* Vs = Ks + kMmaKeys * S;  // (kMmaKeys, S): each V tile
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, g = lane / 4, t = lane % 4;
  const int lm = lane / 8, lr = lane % 8;  // the ldmatrix matrix and row this lane addresses

  mma_stage_tile<T, DMAX>(Ks, p, start, n, q0, 0, h);
  __syncthreads();
  uint32_t qf[KD][4];
#pragma unroll
  for (int kc = 0; kc < KD; ++kc)
    ldmatrix_x4<false>(qf[kc], Ks + (warp * 16 + (lm & 1) * 8 + lr) * S + kc * 16 + (lm >> 1) * 8);

  int64_t row[2], lse_row[2];
  const float* mask_row[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row[r] = q0 + warp * 16 + g + 8 * r;
    lse_row[r] = attention_row(p, b, h, start, row[r]);
    mask_row[r] = (p.mask && row[r] < n) ? p.mask + b * p.ms_b + h * p.ms_h + row[r] * p.ms_i : nullptr;
  }
  float o[ND][4];
#pragma unroll
  for (int nd = 0; nd < ND; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.f;
  // Running max and sum of this lane's share of its two rows. Scores stay in the natural-log domain (an HF
  // mask of finfo.min times log2(e) would overflow to -inf and turn a fully masked row's uniform softmax into
  // zeros); exp(x) is computed as exp2(x * log2(e)), one instruction after the multiply.
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};

  for (int64_t k0 = 0; k0 < n; k0 += kMmaKeys) {
    __syncthreads();  // the Q fragments / the previous K and V tiles are read
    mma_stage_tile<T, DMAX>(Ks, p, start, n, k0, 1, h);
    mma_stage_tile<T, DMAX>(Vs, p, start, n, k0, 2, h);
    __syncthreads();

    float s[NK][4];
#pragma unroll
    for (int nt = 0; nt < NK; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
      for (int kc = 0; kc < KD; kc += 2) {
        uint32_t kb[4];  // B fragments of head dims kc * 16 .. + 32 for keys nt * 8 .. + 8
        ldmatrix_x4<false>(kb, Ks + (nt * 8 + lr) * S + kc * 16 + lm * 8);
        mma_16816<T>(s[nt], qf[kc], kb);
        mma_16816<T>(s[nt], qf[kc + 1], kb + 2);
      }
    }

    // Scale, mask and sequence end; the tile's row maxima over the quad.
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < NK; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        const int64_t key = k0 + nt * 8 + 2 * t + (e & 1);
        float v = -INFINITY;
        if (key < n) {
          v = s[nt][e] * p.scale;
          if (mask_row[r]) v += mask_row[r][key * p.ms_j];
        }
        s[nt][e] = v;
        mx[r] = fmaxf(mx[r], v);
      }
    float m_use[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(kFullMask, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(kFullMask, mx[r], 2));
      const float m_new = fmaxf(m_run[r], mx[r]);
      m_use[r] = m_new == -INFINITY ? 0.f : m_new;  // a row masked so far adds nothing
      const float alpha = exp2f((m_run[r] - m_use[r]) * kLog2e);
      l_run[r] *= alpha;
#pragma unroll
      for (int nd = 0; nd < ND; ++nd) {
        o[nd][2 * r] *= alpha;
        o[nd][2 * r + 1] *= alpha;
      }
      m_run[r] = m_new;
    }

    // P (this lane's part of the warp's 16 x 64 probabilities) as A fragments of 16 keys, times V.
#pragma unroll
    for (int kc = 0; kc < NK / 2; ++kc) {
      uint32_t pa[4];
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int nt = 2 * kc + half;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float p0 = exp2f((s[nt][2 * r] - m_use[r]) * kLog2e), p1 = exp2f((s[nt][2 * r + 1] - m_use[r]) * kLog2e);
          l_run[r] += p0 + p1;  // the undropped sum: the reference normalises before dropping
          if (p.dropout.hash.threshold != 0) {
            const uint32_t key = uint32_t(k0 + nt * 8 + 2 * t);
            if (!dropout_keep(p.dropout, uint64_t(lse_row[r]), key)) p0 = 0.f;
            if (!dropout_keep(p.dropout, uint64_t(lse_row[r]), key + 1)) p1 = 0.f;
          }
          pa[2 * half + r] = pack2<T>(p0, p1);
        }
      }
#pragma unroll
      for (int nd = 0; nd < ND; nd += 2) {
        uint32_t vb[4];  // B fragments of keys kc * 16 .. + 16 for head dims nd * 8 .. + 16
        ldmatrix_x4<true>(vb, Vs + (kc * 16 + (lm & 1) * 8 + lr) * S + (nd + (lm >> 1)) * 8);
        mma_16816<T>(o[nd], pa, vb);
        mma_16816<T>(o[nd + 1], pa, vb + 2);
      }
    }
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = l_run[r];
    l += __shfl_xor_sync(kFullMask, l, 1);
    l += __shfl_xor_sync(kFullMask, l, 2);
    if (row[r] >= n) continue;
    const float inv = l > 0.f ? p.dropout.keep_scale / l : 0.f;
    T* out_row = p.out + (start + row[r]) * int64_t(p.H) + h * p.d;
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) {
      const int c = nd * 8 + 2 * t;
      if (c < p.d) out_row[c] = from_float<T>(o[nd][2 * r] * inv);
      if (c + 1 < p.d) out_row[c + 1] = from_float<T>(o[nd][2 * r + 1] * inv);
    }
    if (t == 0) p.lse[lse_row[r]] = l > 0.f ? m_run[r] + logf(l) : -INFINITY;
  }
}

// The launch of attention (host side, shared by csrc/cuda/attention.cu and tests/cuda_harness): the tensor-core
// kernel when `tensor_cores` (fp16 / bf16 only; the launcher asks for it on sm_80+), else the FMA kernel of
// attention.cuh; grid (query row blocks, nh, B), the DMAX instantiation for the head dim.
template <typename T>
inline Launch<void (*)(AttentionParams<T>)> attention_launch(const AttentionParams<T>& p, bool tensor_cores) {
  if constexpr (!std::is_same_v<T, float>) {
    if (tensor_cores) {
      const int dmax = attention_mma_dmax(p.d);
      return make_launch(dmax == 32   ? &attention_mma_kernel<T, 32>
                         : dmax == 64 ? &attention_mma_kernel<T, 64>
                                      : &attention_mma_kernel<T, 128>,
                         dim3(static_cast<unsigned>(ceil_div(p.max_seqlen, kMmaRows)), static_cast<unsigned>(p.nh),
                              static_cast<unsigned>(p.B)),
                         dim3(kMmaThreads), attention_mma_smem_bytes(p.d));
    }
  }
  const int dmax = attention_dmax(p.d);
  return make_launch(dmax == 64 ? &attention_kernel<T, 64> : &attention_kernel<T, 128>,
                     dim3(static_cast<unsigned>(ceil_div(p.max_seqlen, attention_rows(dmax))),
                          static_cast<unsigned>(p.nh), static_cast<unsigned>(p.B)),
                     dim3(kAttnThreads), attention_smem_bytes(p.d));
}

}  // namespace fastbert::cuda
