// The dropout mask of attention's probabilities, defined once for every kernel that draws it: the CPU kernels
// (csrc/cpu/attention.cpp, scalar and AVX-512, and csrc/cpu/attention_backward.h) and the CUDA kernels
// (csrc/cuda/*.cuh, also run on the CPU by tests/cuda_harness). fastbert.ops.reference.dropout_keep_mask is
// the reference; the tests check that all of them agree bit for bit.
//
// Counter-based, nothing stored: with uint32 (wrapping) arithmetic, fmix32 MurmurHash3's 32-bit finaliser and
// seed_lo / seed_hi the low and high words of the 64-bit seed, element (row, col) is kept when
//   key = fmix32((row + offset) * 0x9E3779B1 + seed_lo)                 (row_key: once per row)
//   x   = fmix32(key ^ (col * 0x85EBCA77 + seed_hi)),   (x >> 8) >= round(p * 2^24)
// row: head * T + token (packed op) or (b * nh + head) * L + query (padded op); col: the key's index in its
// sequence.
#pragma once
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define FASTBERT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTBERT_HOST_DEVICE inline
#endif

namespace fastbert {
// The CPU kernels are compiled once per instruction set: one copy of these per ISA object (no ODR collision).
#ifdef CPU_CAPABILITY
inline namespace CPU_CAPABILITY {
#endif

template <typename U>
FASTBERT_HOST_DEVICE U fmix32(U h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  return h ^ (h >> 16);
}

struct DropoutHash {
  uint32_t seed_lo = 0, seed_hi = 0, offset = 0;
  uint32_t threshold = 0;  // round(p * 2^24); 0 = no dropout

  FASTBERT_HOST_DEVICE uint32_t row_key(uint64_t row) const {
    return fmix32((static_cast<uint32_t>(row) + offset) * 0x9E3779B1u + seed_lo);
  }
  // Whether column col of the row whose row_key is key is kept; col: uint32_t, or a vector of uint32 lanes (a
  // GCC vector type), which gives a vector of lane masks (all ones = kept).
  template <typename U>
  FASTBERT_HOST_DEVICE auto keep_lanes(uint32_t key, U col) const {
    return (fmix32(U(key ^ (col * 0x85EBCA77u + seed_hi))) >> 8) >= threshold;
  }
  FASTBERT_HOST_DEVICE bool keep(uint32_t key, uint32_t col) const { return keep_lanes(key, col); }
};

// Host only: the hash of a call's (dropout_p, seed, offset); all zero (keep everything) when p <= 0.
inline DropoutHash make_dropout_hash(double p, int64_t seed, int64_t offset) {
  DropoutHash h;
  if (p <= 0.0) return h;
  h.seed_lo = static_cast<uint32_t>(static_cast<uint64_t>(seed));
  h.seed_hi = static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32);
  h.offset = static_cast<uint32_t>(static_cast<uint64_t>(offset));
  h.threshold = static_cast<uint32_t>(std::nearbyint(p * 16777216.0));  // Python's round(): half to even
  return h;
}

#ifdef CPU_CAPABILITY
}  // namespace CPU_CAPABILITY
#endif
}  // namespace fastbert
