// embeddings kernel: out = LayerNorm(word[id] + position[pos] + token_type[type]), fp32 statistics.
//
// Fuses the three embedding gathers, their sum and the LayerNorm: each table row is read once and the output
// row written once (4 H-vectors of traffic per token instead of the unfused 9). One warp per token,
// kLnWarps tokens per block; the sum lives in shared memory between the LayerNorm passes (layernorm.cuh).
// Ids out of range stop the kernel with a device-side assert.
#pragma once
#include "cuda/layernorm.cuh"

namespace fastbert::cuda {

template <typename T, typename I>
struct EmbeddingsParams {
  const I* ids;        // (N,)
  const I* pos_ids;    // (N,)
  const I* type_ids;   // (N,) or nullptr (then type 0 when type_weight is given)
  const T* word;       // (V, H)
  const T* pos;        // (P, H)
  const T* type;       // (TT, H) or nullptr
  const T* gamma;      // (H,)
  const T* beta;       // (H,)
  T* out;              // (N, H)
  float* mean;         // (N,)
  float* rstd;         // (N,)
  int64_t N, H, V, P, TT;
  float eps;
  bool vec;  // H % (16 / sizeof(T)) == 0 and every table / output pointer 16-byte aligned
};

template <typename T, typename I>
__global__ void __launch_bounds__(kLnThreads) embeddings_kernel(EmbeddingsParams<T, I> p) {
  constexpr int n = Vec16<T>::n;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / kWarp) + warp;
  if (row >= p.N) return;  // whole warps only; no block barrier below
  const int64_t id = p.ids[row], pid = p.pos_ids[row], tid = p.type_ids ? int64_t(p.type_ids[row]) : 0;
  FB_KERNEL_ASSERT(id >= 0 && id < p.V);
  FB_KERNEL_ASSERT(pid >= 0 && pid < p.P);
  FB_KERNEL_ASSERT(!p.type || (tid >= 0 && tid < p.TT));
  const T* w = p.word + id * p.H;
  const T* q = p.pos + pid * p.H;
  const T* t = p.type ? p.type + tid * p.H : nullptr;
  float* s = dynamic_smem<float>() + int64_t(warp) * p.H;
  const RowSplit<T> split(p.H, p.vec);
  float sum = 0.f;
  for (int64_t c = int64_t(lane) * n; c < split.vec_end; c += kWarp * n) {
    const Vec16<T> wv = load16(w + c), qv = load16(q + c);
    Vec16<T> tv;
    if (t) tv = load16(t + c);
#pragma unroll
    for (int k = 0; k < n; ++k) {
      const float v = to_float(wv.v[k]) + to_float(qv.v[k]) + (t ? to_float(tv.v[k]) : 0.f);
      s[c + k] = v;
      sum += v;
    }
  }
  for (int64_t c = split.vec_end + lane; c < p.H; c += kWarp) {
    const float v = to_float(w[c]) + to_float(q[c]) + (t ? to_float(t[c]) : 0.f);
    s[c] = v;
    sum += v;
  }
  layernorm_epilogue(s, sum, p.H, p.gamma, p.beta, p.out + row * p.H, p.eps, p.vec, p.mean + row, p.rstd + row);
}

// The launch (host side, shared by csrc/cuda/embeddings.cu and tests/cuda_harness).
template <typename T, typename I>
inline EmbeddingsParams<T, I> embeddings_params(EmbeddingsParams<T, I> p) {
  p.vec = p.H % Vec16<T>::n == 0 && aligned16(p.word) && aligned16(p.pos) && (!p.type || aligned16(p.type)) &&
          aligned16(p.gamma) && aligned16(p.beta) && aligned16(p.out);
  return p;
}

template <typename T, typename I>
inline auto embeddings_launch(const EmbeddingsParams<T, I>& p) {
  return layernorm_rows_launch(&embeddings_kernel<T, I>, p.N, p.H);
}

}  // namespace fastbert::cuda
