// pack / unpack kernels: between a padded (B, L) batch and its T real tokens.
//
// pack: (1) one block per row counts the kept tokens, (2) one block prefix-sums the counts into cu_seqlens
// (B+1, int32), (3) after the host has read T = cu_seqlens[B], one block per row writes each kept token's
// flat index b*L+l and position l, in row order, by a block-wide ballot scan over chunks of the row.
// Traffic: the (B, L) bool mask read twice, 16 bytes per real token written.
//
// unpack: (1) fill an inverse map inv (B*L, int32) with -1, (2) inv[indices[t]] = t, (3) every output row
// copies its token's row, or writes zeros, in 16-byte (or narrower, by alignment) words. Every output byte
// is written once and every input byte read once: no zero-fill followed by a scatter.
#pragma once
#include "cuda/common.cuh"

namespace fastbert::cuda {

constexpr int kPackThreads = 256;

// (B, L) keep -> counts (B,). Block b counts row b.
__global__ void __launch_bounds__(kPackThreads)
    pack_count_kernel(const bool* __restrict__ keep, int64_t L, int32_t* __restrict__ counts) {
  FB_SHARED(int, scratch, 32);
  const int64_t b = blockIdx.x;
  int n = 0;
  for (int64_t l = threadIdx.x; l < L; l += blockDim.x) n += keep[b * L + l] ? 1 : 0;
  n = block_sum_int(n, scratch);
  if (threadIdx.x == 0) counts[b] = n;
}

// counts (B,) -> cu_seqlens (B+1,) exclusive prefix sum, by one block.
__global__ void __launch_bounds__(kPackThreads)
    pack_scan_kernel(const int32_t* __restrict__ counts, int64_t B, int32_t* __restrict__ cu_seqlens) {
  FB_SHARED(int, warp_totals, 32);
  FB_SHARED(int, carry, 1);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, nwarps = blockDim.x / kWarp;
  if (threadIdx.x == 0) {
    carry[0] = 0;
    cu_seqlens[0] = 0;
  }
  __syncthreads();
  for (int64_t base = 0; base < B; base += blockDim.x) {
    const int64_t b = base + threadIdx.x;
    const int v = b < B ? counts[b] : 0;
    int incl = v;  // inclusive scan within the warp
#pragma unroll
    for (int o = 1; o < kWarp; o <<= 1) {
      const int up = __shfl_up_sync(kFullMask, incl, o);
      if (lane >= o) incl += up;
    }
    if (lane == kWarp - 1) warp_totals[warp] = incl;
    __syncthreads();
    int before = carry[0];
    for (int w = 0; w < warp; ++w) before += warp_totals[w];
    if (b < B) cu_seqlens[b + 1] = before + incl;
    __syncthreads();
    if (threadIdx.x == blockDim.x - 1) {
      int total = carry[0];
      for (int w = 0; w < nwarps; ++w) total += warp_totals[w];
      carry[0] = total;
    }
    __syncthreads();
  }
}

// keep (B, L), cu_seqlens (B+1,) -> indices (T,), positions (T,). Block b writes row b's tokens.
__global__ void __launch_bounds__(kPackThreads)
    pack_write_kernel(const bool* __restrict__ keep, int64_t L, const int32_t* __restrict__ cu_seqlens,
                      int64_t* __restrict__ indices, int64_t* __restrict__ positions) {
  FB_SHARED(int, warp_totals, 32);
  const int64_t b = blockIdx.x;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, nwarps = blockDim.x / kWarp;
  int64_t next = cu_seqlens[b];
  for (int64_t base = 0; base < L; base += blockDim.x) {
    const int64_t l = base + threadIdx.x;
    const bool k = l < L && keep[b * L + l];
    const unsigned ballot = __ballot_sync(kFullMask, k);
    if (lane == 0) warp_totals[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, chunk = 0;
    for (int w = 0; w < nwarps; ++w) {
      const int c = warp_totals[w];
      before += w < warp ? c : 0;
      chunk += c;
    }
    if (k) {
      const int64_t t = next + before + __popc(ballot & ((1u << lane) - 1u));
      indices[t] = b * L + l;
      positions[t] = l;
    }
    next += chunk;
    __syncthreads();
  }
}

constexpr int kUnpackThreads = 256;

// inv (N,) = -1. Grid-stride, as the other unpack kernels.
__global__ void __launch_bounds__(kUnpackThreads) unpack_fill_kernel(int32_t* __restrict__ inv, int64_t N) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N; i += int64_t(gridDim.x) * blockDim.x)
    inv[i] = -1;
}

// inv[indices[t]] = t for t < T; indices must lie in [0, N).
__global__ void __launch_bounds__(kUnpackThreads)
    unpack_scatter_kernel(const int64_t* __restrict__ indices, int64_t T, int64_t N, int32_t* __restrict__ inv) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < T; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = indices[t];
    FB_KERNEL_ASSERT(i >= 0 && i < N);
    inv[i] = static_cast<int32_t>(t);
  }
}

// out (N, W) = inv[r] >= 0 ? x[inv[r]] : 0, rows of W words of type E (uint4, uint2, unsigned, uint16_t or
// uint8_t, the widest that the row size and the pointers' alignment allow: UnpackCopyParams::word bytes).
struct UnpackCopyParams {
  const void* x;       // (T, W) words
  const int32_t* inv;  // (N,)
  void* out;           // (N, W) words
  int64_t N, W;
  int word;            // bytes per word: 16, 8, 4, 2 or 1
};

template <typename E>
__global__ void __launch_bounds__(kUnpackThreads) unpack_copy_kernel(UnpackCopyParams p) {
  const E* __restrict__ x = static_cast<const E*>(p.x);
  E* __restrict__ out = static_cast<E*>(p.out);
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < p.N * p.W;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / p.W, c = e - r * p.W;
    const int32_t t = p.inv[r];
    E v;
    if (t >= 0) {
      v = x[int64_t(t) * p.W + c];
    } else {
      v = E{};
    }
    out[e] = v;
  }
}

// ---- the launches (host side, shared by csrc/cuda/pack.cu and tests/cuda_harness)

// pack_count_kernel and pack_write_kernel: one block per row of B.
template <typename Kernel>
inline Launch<Kernel> pack_rows_launch(Kernel kernel, int64_t B) {
  return make_launch(kernel, dim3(static_cast<unsigned>(B)), dim3(kPackThreads));
}

inline auto pack_scan_launch() { return make_launch(&pack_scan_kernel, dim3(1), dim3(kPackThreads)); }

// The unpack kernels grid-stride over `work` items, at most 4096 blocks.
template <typename Kernel>
inline Launch<Kernel> unpack_launch(Kernel kernel, int64_t work) {
  const int64_t blocks = ceil_div(work, kUnpackThreads);
  return make_launch(kernel, dim3(static_cast<unsigned>(blocks < 4096 ? (blocks > 0 ? blocks : 1) : 4096)),
                     dim3(kUnpackThreads));
}

// The copy of N rows of row_bytes bytes from x's rows (inv[r] >= 0) or zeros into out, in the widest words
// that x, out and row_bytes allow.
inline UnpackCopyParams unpack_copy_params(const void* x, const int32_t* inv, void* out, int64_t N, int64_t row_bytes) {
  const uintptr_t align =
      reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(out) | static_cast<uintptr_t>(row_bytes);
  int word = 16;
  while (align % word != 0) word /= 2;
  return {x, inv, out, N, row_bytes / word, word};
}

inline Launch<void (*)(UnpackCopyParams)> unpack_copy_launch(const UnpackCopyParams& p) {
  void (*kernel)(UnpackCopyParams) = p.word == 16  ? &unpack_copy_kernel<uint4>
                                     : p.word == 8 ? &unpack_copy_kernel<uint2>
                                     : p.word == 4 ? &unpack_copy_kernel<uint32_t>
                                     : p.word == 2 ? &unpack_copy_kernel<uint16_t>
                                                   : &unpack_copy_kernel<uint8_t>;
  return unpack_launch(kernel, p.N * p.W);
}

}  // namespace fastbert::cuda
