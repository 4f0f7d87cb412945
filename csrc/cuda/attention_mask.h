// Host side of attention_masked and attention_masked_backward on CUDA (their .cu launchers only): the mask's
// checks and its conversion to what the kernels read.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/full.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>

#include <limits>
#include <vector>

#include "cuda/host.h"

namespace fastbert::cuda {

// Checks that `mask` (bool or floating, on qkv's device) broadcasts to (B, nh, L, L), naming `op`.
inline void check_attention_mask(const at::Tensor& mask, const at::Tensor& qkv, int64_t B, int64_t nh, int64_t L,
                                 const char* op) {
  check_same_device(mask, qkv, op, "mask");
  const std::vector<int64_t> full = {B, nh, L, L};
  bool ok = mask.dim() <= 4;
  for (int64_t k = 0; ok && k < mask.dim(); ++k) {
    const int64_t have = mask.size(mask.dim() - 1 - k), want = full[3 - k];
    ok = have == want || have == 1;
  }
  TORCH_CHECK(ok, op, ": mask must be broadcastable to (", B, ", ", nh, ", ", L, ", ", L, "), got ", mask.sizes());
  TORCH_CHECK(mask.scalar_type() == at::kBool || at::isFloatingType(mask.scalar_type()), op,
              ": mask must be bool or floating point, got ", mask.scalar_type());
}

// The mask as an additive fp32 tensor at its own broadcastable shape (bool: 0 / -inf; floating: cast), expanded
// to (B, nh, L, L) by strides (0 on broadcast dimensions, no copy): the kernels read element (b, h, i, j) at
// b * stride(0) + h * stride(1) + i * stride(2) + j * stride(3).
inline at::Tensor additive_attention_mask(const at::Tensor& mask, int64_t B, int64_t nh, int64_t L) {
  const auto f32 = mask.options().dtype(at::kFloat);
  at::Tensor additive = mask.scalar_type() == at::kBool
                            ? at::where(mask, at::zeros({}, f32), at::full({}, -std::numeric_limits<float>::infinity(), f32))
                            : mask.to(at::kFloat);
  return additive.expand({B, nh, L, L});
}

}  // namespace fastbert::cuda
