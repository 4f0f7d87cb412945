// embeddings_backward kernels: the gradients of out = LayerNorm(word[id] + position[pos] + token_type[type]).
//
// (1) embeddings_keys_kernel checks each token's ids against the table sizes (a device-side assert) and writes
// its row key per table (word id, V + position id, V + P + type id). embeddings_backward_rows_kernel then fuses
// the re-gather of each token's table rows (their sum is never saved), the LayerNorm backward with the
// forward's fp32 (mean, rstd) and the first stage of the LayerNorm parameters' reduction (layernorm_backward.cuh):
// grad_s (N, H) fp32, one warp per token. The assert has a kernel of its own because its call site spills
// registers of the row loop.
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
#include "cuda/embeddings.cuh"
#include "cuda/layernorm_backward.cuh"

namespace fastbert::cuda {

constexpr int kScatterChunk = 32;     // sorted keys per block
constexpr int kScatterThreads = 128;  // columns per block
constexpr int kKeysThreads = 256;     // embeddings_keys_kernel's block

template <typename T, typename I>
struct EmbeddingsBackwardParams : EmbeddingsInputs<T, I> {
  const T* grad_out;  // (N, H)
  const float* mean;  // (N,)
  const float* rstd;  // (N,)
  float* grad_s;      // (N, H)
  int64_t* keys;      // (tables * N,): [word ids | V + position ids | V + P + type ids]
  float* partials;    // (gridDim.x, 2, H)
};

// Grid-stride over the N tokens.
template <typename T, typename I>
__global__ void __launch_bounds__(kKeysThreads) embeddings_keys_kernel(EmbeddingsBackwardParams<T, I> p) {
  for (int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; row < p.N;
       row += int64_t(gridDim.x) * blockDim.x) {
    const TokenIds id = token_ids(p, row);
    check_token_ids(p, id);
    p.keys[row] = id.word;
    p.keys[p.N + row] = p.V + id.pos;
    if (p.type) p.keys[2 * p.N + row] = p.V + p.P + id.type;
  }
}

// After embeddings_keys_kernel, which checked the ids.
template <typename T, typename I>
__global__ void __launch_bounds__(kLnBwdThreads) embeddings_backward_rows_kernel(EmbeddingsBackwardParams<T, I> p) {
  ln_backward_rows<T>(p, [&](const LnBwdSmem& sm, int64_t row) {
    const TokenIds id = token_ids(p, row);
    ln_backward_row(sm, token_row(p, id), p.grad_out + row * p.H, p.gamma, p.mean[row], p.rstd[row], p.H, p.vec,
                    p.grad_s + row * p.H);
  });
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

// The launches (host side, shared by csrc/cuda/embeddings_backward.cu and tests/cuda_harness): the params from
// embeddings_inputs() (embeddings.cuh) and the rest, the 16-byte path only if grad_out is aligned too; the keys kernel,
// the row kernel, then ln_backward_reduce_kernel over its grid's partials; after the sort, the scatter and its combine
// kernel, both on grid (chunks, ceil(H / 128)), the workspace (chunks, 2, H) fp32.
template <typename T, typename I>
inline EmbeddingsBackwardParams<T, I> embeddings_backward_params(EmbeddingsBackwardParams<T, I> p) {
  p.vec = p.vec && aligned16(p.grad_out);
  return p;
}

template <typename T, typename I>
inline auto embeddings_keys_launch(int64_t N) {
  const int64_t blocks = ceil_div(N, kKeysThreads);
  return make_launch(&embeddings_keys_kernel<T, I>, dim3(static_cast<unsigned>(blocks < 4096 ? blocks : 4096)),
                     dim3(kKeysThreads));
}

template <typename T, typename I>
inline auto embeddings_backward_rows_launch(int64_t N, int64_t H, int64_t smem_limit) {
  return ln_backward_rows_launch(&embeddings_backward_rows_kernel<T, I>, N, H, smem_limit);
}

template <typename T>
inline auto embeddings_scatter_launch(int64_t K, int64_t H, bool combine) {
  return make_launch(
      combine ? &embeddings_scatter_combine_kernel<T> : &embeddings_scatter_kernel<T>,
      dim3(static_cast<unsigned>(ceil_div(K, kScatterChunk)), static_cast<unsigned>(ceil_div(H, kScatterThreads))),
      dim3(kScatterThreads));
}

}  // namespace fastbert::cuda
