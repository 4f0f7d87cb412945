// Warp-wide tensor-core building blocks: the product D (16x8, fp32) += A (16x16) * B (16x8), A and B in fp16 or
// bf16 (PTX mma.sync.aligned.m16n8k16, sm_80 and newer), and the shared-memory loads that feed it (ldmatrix).
// Under the CPU test harness each has an exact emulation, so kernels built on them run in
// tests/ops/test_cuda_harness.py too.
//
// Fragment layout (PTX ISA, "Matrix Fragments for mma.m16n8k16"), lane = 4 * g + t (g = lane / 4, t = lane % 4);
// a 32-bit register holds two 16-bit values, the lower column / row first:
//   A: a[0] = A[g][2t, 2t+1]   a[1] = A[g+8][2t, 2t+1]   a[2] = A[g][2t+8, 2t+9]   a[3] = A[g+8][2t+8, 2t+9]
//   B: b[0] = B[2t, 2t+1][g]   b[1] = B[2t+8, 2t+9][g]
//   D: d[0], d[1] = D[g][2t, 2t+1]   d[2], d[3] = D[g+8][2t, 2t+1]
#pragma once
#include <type_traits>

#include "cuda/common.cuh"

namespace fastbert::cuda {

// Two values rounded to the 16-bit storage type T and packed into one register, `lo` in the lower half.
template <typename T>
FB_DEVICE uint32_t pack2(float lo, float hi) {
  return uint32_t(from_float<T>(lo).x) | (uint32_t(from_float<T>(hi).x) << 16);
}

// A 32-bit word of shared memory holding elements c and c + 1 of a row of 16-bit values (c even).
template <typename T>
FB_DEVICE uint32_t load_pair(const T* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

#ifdef FASTBERT_CUDA_HARNESS
namespace mma_detail {
template <typename T>
inline float half_bits_to_float(uint32_t bits) {
  return static_cast<float>(T(static_cast<uint16_t>(bits & 0xFFFFu), typename T::from_bits_t{}));
}
}  // namespace mma_detail
#endif

// Four 8x8 matrices of 16-bit elements from shared memory, one register of each per lane: ldmatrix.x4
// (sm_75 and newer). Lane l names row l % 8 of matrix l / 8 (`row`: 8 consecutive elements, 16-byte
// aligned). Lane 4g + t receives in r[j] elements (g, 2t) and (g, 2t + 1) of matrix j, or with kTrans
// elements (2t, g) and (2t + 1, g): the A / B fragments of mma_16816 straight from row-major tiles.
template <bool kTrans>
FB_DEVICE void ldmatrix_x4(uint32_t r[4], const void* row) {
#if defined(__CUDA_ARCH__)
#if __CUDA_ARCH__ >= 750
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
  }
#else
  __trap();
#endif
#elif defined(FASTBERT_CUDA_HARNESS)
  FB_KERNEL_ASSERT((reinterpret_cast<uintptr_t>(row) & 15u) == 0);  // the hardware's alignment rule
  uint64_t rows[32];
  ::fbh::warp_gather(reinterpret_cast<uint64_t>(row), rows);
  const int lane = int(threadIdx.x % kWarp), g = lane / 4, t = lane % 4;
  for (int j = 0; j < 4; ++j) {
    auto at = [&](int rr, int cc) { return uint32_t(reinterpret_cast<const uint16_t*>(rows[8 * j + rr])[cc]); };
    r[j] = kTrans ? (at(2 * t, g) | at(2 * t + 1, g) << 16) : (at(g, 2 * t) | at(g, 2 * t + 1) << 16);
  }
#endif
}

template <typename T>
FB_DEVICE void mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
  static_assert(std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>, "mma takes fp16 or bf16");
#if defined(__CUDA_ARCH__)
#if __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, c10::Half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#else
  __trap();  // the launchers pick tensor-core kernels on sm_80 and newer only
#endif
#elif defined(FASTBERT_CUDA_HARNESS)
  // Gather the whole A and B tiles from the warp (three warp collectives), then form this lane's D elements.
  uint64_t a01[32], a23[32], bb[32];
  ::fbh::warp_gather(uint64_t(a[0]) | uint64_t(a[1]) << 32, a01);
  ::fbh::warp_gather(uint64_t(a[2]) | uint64_t(a[3]) << 32, a23);
  ::fbh::warp_gather(uint64_t(b[0]) | uint64_t(b[1]) << 32, bb);
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    const uint32_t regs[4] = {uint32_t(a01[l]), uint32_t(a01[l] >> 32), uint32_t(a23[l]), uint32_t(a23[l] >> 32)};
    for (int k = 0; k < 4; ++k) {
      const int row = g + 8 * (k & 1), col = 2 * t + 8 * (k >> 1);
      A[row][col] = mma_detail::half_bits_to_float<T>(regs[k]);
      A[row][col + 1] = mma_detail::half_bits_to_float<T>(regs[k] >> 16);
    }
    const uint32_t bregs[2] = {uint32_t(bb[l]), uint32_t(bb[l] >> 32)};
    for (int k = 0; k < 2; ++k) {
      B[2 * t + 8 * k][g] = mma_detail::half_bits_to_float<T>(bregs[k]);
      B[2 * t + 8 * k + 1][g] = mma_detail::half_bits_to_float<T>(bregs[k] >> 16);
    }
  }
  const int lane = int(threadIdx.x % kWarp), g = lane / 4, t = lane % 4;
  for (int e = 0; e < 4; ++e) {
    const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
    float acc = d[e];
    for (int k = 0; k < 16; ++k) acc = std::fma(A[row][k], B[k][col], acc);
    d[e] = acc;
  }
#endif
}

}  // namespace fastbert::cuda
