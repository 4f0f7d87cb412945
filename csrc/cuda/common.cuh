// Device helpers shared by fastbert's CUDA kernels: storage <-> fp32 conversion, 16-byte vector loads and
// stores, warp and block reductions, shared-memory declarations, the kernel assert and the dropout mask.
//
// Host-free: this file and every csrc/cuda/<op>.cuh compile under nvcc and, with tests/cuda_harness/harness.h
// included first (FASTBERT_CUDA_HARNESS), under the host compiler, where the test harness runs the kernels on
// the CPU. So: no ATen, no host-only calls, shared memory only through FB_SHARED / dynamic_smem.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>

#include "dropout_hash.h"

#ifndef FASTBERT_CUDA_HARNESS
#include <cuda_runtime.h>
#endif

// Static shared memory: FB_SHARED(float, partial, 32) declares `partial`, 32 floats shared by the block.
// Under the harness each such array is its own exact-size, NaN-filled allocation per block.
#ifdef FASTBERT_CUDA_HARNESS
#define FB_SHARED(type, name, count)    \
  static const char name##_fbh_key = 0; \
  type* name = static_cast<type*>(::fbh::block_shared(&name##_fbh_key, sizeof(type) * (count)))
#define FB_KERNEL_ASSERT(cond)                                         \
  do {                                                                 \
    if (!(cond)) ::fbh::kernel_assert_fail(#cond, __FILE__, __LINE__); \
  } while (0)
#else
#define FB_SHARED(type, name, count) __shared__ type name[count]
#define FB_KERNEL_ASSERT(cond) CUDA_KERNEL_ASSERT(cond)
#endif

#define FB_DEVICE __device__ __forceinline__
#define FB_HOST_DEVICE __host__ __device__ inline

namespace fastbert::cuda {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// ---- 16-bit storage: all arithmetic is fp32 (c10::Half / c10::BFloat16 convert in registers, so sm_75,
// which has no bf16 arithmetic, runs the bf16 kernels too).
template <typename T>
FB_DEVICE float to_float(T v) {
  return static_cast<float>(v);
}
template <typename T>
FB_DEVICE T from_float(float v) {
  return static_cast<T>(v);
}

// ---- 16-byte vectors: VecN<T>::n elements of T in one 128-bit load/store.
template <typename T>
struct alignas(16) Vec16 {
  static constexpr int n = 16 / sizeof(T);
  T v[n];
};

template <typename T>
FB_DEVICE Vec16<T> load16(const T* p) {
  Vec16<T> r;
  *reinterpret_cast<uint4*>(&r) = *reinterpret_cast<const uint4*>(p);
  return r;
}

template <typename T>
FB_DEVICE void store16(T* p, const Vec16<T>& r) {
  *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(&r);
}

FB_HOST_DEVICE bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ---- dynamic shared memory (the launch's third <<<>>> argument)
template <typename T>
FB_DEVICE T* dynamic_smem() {
#ifdef FASTBERT_CUDA_HARNESS
  return static_cast<T*>(::fbh::dynamic_smem());
#else
  extern __shared__ __align__(16) unsigned char fastbert_dynamic_smem[];
  return reinterpret_cast<T*>(fastbert_dynamic_smem);
#endif
}

// ---- reductions
FB_DEVICE float warp_sum(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

FB_DEVICE float warp_max(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

FB_DEVICE int warp_sum_int(int v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the total. `scratch` holds 32
// ints of shared memory; the block must not use it again before a __syncthreads.
FB_DEVICE int block_sum_int(int v, int* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, nwarps = blockDim.x / kWarp;
  v = warp_sum_int(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  int total = lane < nwarps ? scratch[lane] : 0;
  total = warp_sum_int(total);
  return total;
}

// ---- the dropout mask (csrc/dropout_hash.h) and the scale of the kept probabilities.
struct DropoutParams {
  DropoutHash hash;        // hash.threshold 0 = no dropout
  float keep_scale = 1.f;  // 1 / (1 - p)
};

// Plain C++ (host side of the .cu launchers and of the test harness driver).
inline DropoutParams make_dropout_params(double p, int64_t seed, int64_t offset) {
  return {make_dropout_hash(p, seed, offset), static_cast<float>(1.0 / (1.0 - p))};
}

// row: head * T + query token (packed) or (b * nh + h) * L + query (masked); col: key index in its sequence.
FB_DEVICE bool dropout_keep(const DropoutParams& d, uint64_t row, uint32_t col) {
  return d.hash.keep(d.hash.row_key(row), col);
}

FB_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- launches. Each <op>.cuh works out its kernels' launches on the host, without ATen or CUDA calls, so the
// .cu launcher and the CPU test harness (tests/cuda_harness/driver.cpp) launch the same way: which kernel
// (instantiation), grid, block, dynamic shared memory. The .cu files run one with launch() (host.h).
constexpr int64_t kSmemDefault = 48 * 1024;  // dynamic shared memory a block gets without opting in

template <typename Kernel>
struct Launch {
  Kernel kernel;
  dim3 grid, block;
  size_t smem = 0;
};

template <typename Kernel>
inline Launch<Kernel> make_launch(Kernel kernel, dim3 grid, dim3 block, int64_t smem = 0) {
  return {kernel, grid, block, static_cast<size_t>(smem)};
}

}  // namespace fastbert::cuda
