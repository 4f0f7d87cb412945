// embeddings_backward kernels: the gradients of out = LayerNorm(word[id] + position[pos] + token_type[type]).
//
// (1) embeddings_backward_rows_kernel fuses the re-gather of each token's table rows (their sum is never
// saved), the LayerNorm backward with the forward's fp32 (mean, rstd) and the first stage of the LayerNorm
// parameters' reduction (layernorm_backward.cuh): grad_s (N, H) fp32, one warp per token. It also writes each
// token's row key per table (word id, V + position id, V + P + type id) and stops on an id out of range.
// (2) The tables' gradients, dense like nn.Embedding's, by a deterministic scatter-add without atomics: the
// launcher sorts the keys (stable, so equal keys keep token order) and each run of equal keys is one table
// row, the sum of its tokens' grad_s rows. The sorted keys are cut into chunks of kScatterChunk; a block per
// (chunk, 128 columns) walks its chunk in order with one column per thread, writes the rows whose run lies
// inside the chunk, and leaves the pieces of runs that cross a chunk boundary (at most two per chunk: the
// one it starts with, the one it ends with) in a (chunks, 2, H) fp32 workspace; a second kernel adds those
// pieces, chunk by chunk, for the runs that cross. A long run (a token type shared by every token) is thus
// summed by many blocks at once, in a fixed order. 16-bit tables: fp32 sums, rounded once. Rows no token
// uses stay as the launcher zeroed them.
#pragma once
#include "cuda/layernorm_backward.cuh"

namespace fastbert::cuda {

constexpr int kScatterChunk = 32;     // sorted keys per block
constexpr int kScatterThreads = 128;  // columns per block

template <typename T, typename I>
struct EmbeddingsBackwardParams {
  const T* grad_out;   // (N, H)
  const I* ids;        // (N,)
  const I* pos_ids;    // (N,)
  const I* type_ids;   // (N,) or nullptr (then type 0 when type is given)
  const T* word;       // (V, H)
  const T* pos;        // (P, H)
  const T* type;       // (TT, H) or nullptr
  const T* gamma;      // (H,)
  const float* mean;   // (N,)
  const float* rstd;   // (N,)
  float* grad_s;       // (N, H)
  int64_t* keys;       // (tables * N,): [word ids | V + position ids | V + P + type ids]
  float* partials;     // (gridDim.x, 2, H)
  int64_t N, H, V, P, TT;
  bool vec;  // H % (16 / sizeof(T)) == 0 and grad_out, the tables and gamma 16-byte aligned
};

template <typename T, typename I>
__global__ void __launch_bounds__(kLnBwdWarps * kWarp)
    embeddings_backward_rows_kernel(EmbeddingsBackwardParams<T, I> p) {
  constexpr int n = Vec16<T>::n;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const LnBwdSmem sm = ln_backward_smem_of_warp(warp, p.H);
  const RowSplit<T> split(p.H, p.vec);
  ln_backward_zero<T>(sm, p.H, p.vec);
  const int64_t warps_total = int64_t(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t row = int64_t(blockIdx.x) * (blockDim.x / kWarp) + warp; row < p.N; row += warps_total) {
    const int64_t id = p.ids[row], pid = p.pos_ids[row], tid = p.type_ids ? int64_t(p.type_ids[row]) : 0;
    // One assert for the three ids: each assert is a call site whose saved registers can spill.
    FB_KERNEL_ASSERT(id >= 0 && id < p.V && pid >= 0 && pid < p.P && (!p.type || (tid >= 0 && tid < p.TT)));
    if (lane == 0) {
      p.keys[row] = id;
      p.keys[p.N + row] = p.V + pid;
      if (p.type) p.keys[2 * p.N + row] = p.V + p.P + tid;
    }
    const T* w = p.word + id * p.H;
    const T* q = p.pos + pid * p.H;
    const T* t = p.type ? p.type + tid * p.H : nullptr;
    const T* g = p.grad_out + row * p.H;
    const float mean = p.mean[row], rstd = p.rstd[row];
    float sum_a = 0.f, sum_b = 0.f;
    for (int64_t c = int64_t(lane) * n; c < split.vec_end; c += kWarp * n) {
      const Vec16<T> wv = load16(w + c), qv = load16(q + c), gv = load16(g + c), gam = load16(p.gamma + c);
      Vec16<T> tv;
      if (t) tv = load16(t + c);
#pragma unroll
      for (int k = 0; k < n; ++k) {
        const float s = to_float(wv.v[k]) + to_float(qv.v[k]) + (t ? to_float(tv.v[k]) : 0.f);
        ln_backward_col(sm, c + k, (s - mean) * rstd, to_float(gv.v[k]), to_float(gam.v[k]), sum_a, sum_b);
      }
    }
    for (int64_t c = split.vec_end + lane; c < p.H; c += kWarp) {
      const float s = to_float(w[c]) + to_float(q[c]) + (t ? to_float(t[c]) : 0.f);
      ln_backward_col(sm, c, (s - mean) * rstd, to_float(g[c]), to_float(p.gamma[c]), sum_a, sum_b);
    }
    ln_backward_finish<T, float>(sm, sum_a, sum_b, p.H, g, p.gamma, rstd, p.grad_s + row * p.H, p.vec);
  }
  ln_backward_block_partials(p.H, p.partials);
}

template <typename T>
struct EmbeddingsScatterParams {
  const int64_t* sorted;  // (K,) the keys, ascending
  const int64_t* perm;    // (K,) where each sorted key was in the keys: table * N + token
  const float* grad_s;    // (N, H)
  float* ws;              // (chunks, 2, H): pieces of the runs that cross a chunk boundary
  T* word;                // (V, H) zero-filled
  T* pos;                 // (P, H) zero-filled
  T* type;                // (TT, H) zero-filled, or nullptr
  int64_t K, N, H, V, P, TT;
};

template <typename T>
FB_DEVICE T* table_row(const EmbeddingsScatterParams<T>& p, int64_t key) {
  FB_KERNEL_ASSERT(key >= 0 && key < p.V + p.P + (p.type ? p.TT : 0));
  if (key < p.V) return p.word + key * p.H;
  if (key < p.V + p.P) return p.pos + (key - p.V) * p.H;
  return p.type + (key - p.V - p.P) * p.H;
}

// Chunk blockIdx.x, column blockIdx.y * 128 + thread (embeddings_scatter_launch).
template <typename T>
__global__ void __launch_bounds__(kScatterThreads) embeddings_scatter_kernel(EmbeddingsScatterParams<T> p) {
  const int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= p.H) return;  // no barrier below
  const int64_t chunk = blockIdx.x, begin = chunk * kScatterChunk;
  const int64_t end = begin + kScatterChunk < p.K ? begin + kScatterChunk : p.K;
  float acc = 0.f;
  int64_t run = begin;  // first sorted index of the current run (within the chunk)
  for (int64_t i = begin; i < end; ++i) {
    const int64_t key = p.sorted[i];
    int64_t token = p.perm[i];
    while (token >= p.N) token -= p.N;
    acc += p.grad_s[token * p.H + c];
    const bool run_ends = i + 1 == p.K || p.sorted[i + 1] != key;
    if (run_ends || i + 1 == end) {
      if (run_ends && (run == 0 || p.sorted[run - 1] != key)) table_row(p, key)[c] = from_float<T>(acc);
      else p.ws[(2 * chunk + (run == begin ? 0 : 1)) * p.H + c] = acc;  // crosses: slot 0 at the chunk's start
      acc = 0.f;
      run = i + 1;
    }
  }
}

// After embeddings_scatter_kernel, same grid and block: each run that starts in chunk blockIdx.x and crosses
// its end is the sum of its pieces, taken in chunk order.
template <typename T>
__global__ void __launch_bounds__(kScatterThreads) embeddings_scatter_combine_kernel(EmbeddingsScatterParams<T> p) {
  const int64_t c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= p.H) return;
  const int64_t chunk = blockIdx.x, begin = chunk * kScatterChunk;
  const int64_t next = begin + kScatterChunk;  // first index of the next chunk
  if (next >= p.K) return;
  const int64_t key = p.sorted[next - 1];
  if (p.sorted[next] != key) return;  // the chunk's last run ends in it
  const bool whole_chunk = p.sorted[begin] == key;
  if (whole_chunk && begin > 0 && p.sorted[begin - 1] == key) return;  // the run started in an earlier chunk
  float acc = p.ws[(2 * chunk + (whole_chunk ? 0 : 1)) * p.H + c];
  for (int64_t j = chunk + 1;; ++j) {
    acc += p.ws[2 * j * p.H + c];
    const int64_t after = (j + 1) * kScatterChunk;
    if (after >= p.K || p.sorted[after] != key) break;
  }
  table_row(p, key)[c] = from_float<T>(acc);
}

// The launches (host side, shared by csrc/cuda/embeddings_backward.cu and tests/cuda_harness): the row kernel,
// then ln_backward_reduce_kernel over its grid's partials; after the sort, the scatter and its combine kernel,
// both on grid (chunks, ceil(H / 128)), the workspace (chunks, 2, H) fp32.
template <typename T, typename I>
inline EmbeddingsBackwardParams<T, I> embeddings_backward_params(EmbeddingsBackwardParams<T, I> p) {
  p.vec = p.H % Vec16<T>::n == 0 && aligned16(p.grad_out) && aligned16(p.word) && aligned16(p.pos) &&
          (!p.type || aligned16(p.type)) && aligned16(p.gamma);
  return p;
}

template <typename T, typename I>
inline auto embeddings_backward_rows_launch(int64_t N, int64_t H, int64_t smem_limit) {
  return ln_backward_rows_launch(&embeddings_backward_rows_kernel<T, I>, N, H, smem_limit);
}

template <typename T>
inline auto embeddings_scatter_launch(int64_t K, int64_t H, bool combine) {
  return make_launch(combine ? &embeddings_scatter_combine_kernel<T> : &embeddings_scatter_kernel<T>,
                     dim3(static_cast<unsigned>(ceil_div(K, kScatterChunk)),
                          static_cast<unsigned>(ceil_div(H, kScatterThreads))),
                     dim3(kScatterThreads));
}

}  // namespace fastbert::cuda
