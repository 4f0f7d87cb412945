// embeddings kernel: out = LayerNorm(word[id] + position[pos] + token_type[type]), fp32 statistics.
//
// Fuses the three embedding gathers, their sum and the LayerNorm: each table row is read once and the output
// row written once (4 H-vectors of traffic per token instead of the unfused 9). One warp per token,
// kLnWarps tokens per block; the sum lives in shared memory between the LayerNorm passes (layernorm.cuh).
// Ids out of range stop the kernel with a device-side assert.
#pragma once
#include "cuda/layernorm.cuh"

namespace fastbert::cuda {

// What the forward and the backward kernels both read: the tokens' ids, the tables, the LayerNorm weight.
template <typename T, typename I>
struct EmbeddingsInputs {
  const I* ids;       // (N,)
  const I* pos_ids;   // (N,)
  const I* type_ids;  // (N,) or nullptr (then type 0 when type is given)
  const T* word;      // (V, H)
  const T* pos;       // (P, H)
  const T* type;      // (TT, H) or nullptr
  const T* gamma;     // (H,)
  int64_t N, H, V, P, TT;
  bool vec;  // H % (16 / sizeof(T)) == 0 and the tables, gamma and the op's other (N, H) / (H,) pointers aligned
};

// A token's ids, and their check against the table sizes (one assert for the three: each assert is a call site
// whose saved registers can spill).
struct TokenIds { int64_t word, pos, type; };

template <typename T, typename I>
FB_DEVICE TokenIds token_ids(const EmbeddingsInputs<T, I>& p, int64_t row) {
  return {p.ids[row], p.pos_ids[row], p.type_ids ? int64_t(p.type_ids[row]) : 0};
}

template <typename T, typename I>
FB_DEVICE void check_token_ids(const EmbeddingsInputs<T, I>& p, const TokenIds& id) {
  FB_KERNEL_ASSERT(id.word >= 0 && id.word < p.V && id.pos >= 0 && id.pos < p.P &&
                   (!p.type || (id.type >= 0 && id.type < p.TT)));
}

// The token's sum word[id] + position[pos] (+ token_type[type]).
template <typename T, typename I>
FB_DEVICE SumRow<T> token_row(const EmbeddingsInputs<T, I>& p, const TokenIds& id) {
  return {p.word + id.word * p.H, p.pos + id.pos * p.H, p.type ? p.type + id.type * p.H : nullptr};
}

template <typename T, typename I>
struct EmbeddingsParams : EmbeddingsInputs<T, I> {
  const T* beta;  // (H,)
  T* out;         // (N, H)
  float* mean;    // (N,)
  float* rstd;    // (N,)
  float eps;
};

template <typename T, typename I>
__global__ void __launch_bounds__(kLnThreads) embeddings_kernel(EmbeddingsParams<T, I> p) {
  const int warp = threadIdx.x / kWarp;
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / kWarp) + warp;
  if (row >= p.N) return;  // whole warps only; no block barrier below
  const TokenIds id = token_ids(p, row);
  check_token_ids(p, id);
  float* s = dynamic_smem<float>() + int64_t(warp) * p.H;
  const float sum = stage_row(token_row(p, id), p.H, p.vec, s);
  layernorm_epilogue(s, sum, p.H, p.gamma, p.beta, p.out + row * p.H, p.eps, p.vec, p.mean + row, p.rstd + row);
}

// The launch (host side, shared by the .cu launchers and tests/cuda_harness): the inputs from the caller's
// pointers and sizes, plus whether the tables and gamma allow the 16-byte path; the forward's params, which
// also need beta and out aligned for it.
template <typename T, typename I>
inline EmbeddingsInputs<T, I> embeddings_inputs(EmbeddingsInputs<T, I> in) {
  in.vec = in.H % Vec16<T>::n == 0 && aligned16(in.word) && aligned16(in.pos) && (!in.type || aligned16(in.type)) &&
           aligned16(in.gamma);
  return in;
}

template <typename T, typename I>
inline EmbeddingsParams<T, I> embeddings_params(EmbeddingsParams<T, I> p) {
  p.vec = p.vec && aligned16(p.beta) && aligned16(p.out);
  return p;
}

template <typename T, typename I>
inline auto embeddings_launch(const EmbeddingsParams<T, I>& p) {
  return layernorm_rows_launch(&embeddings_kernel<T, I>, p.N, p.H);
}

}  // namespace fastbert::cuda
