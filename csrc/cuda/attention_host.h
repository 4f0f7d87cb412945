// Host side of the attention launchers on CUDA (csrc/cuda/attention.cu, attention_backward.cu): the argument
// checks the forward and backward ops share, the mask's conversion to what the kernels read, and the kernels'
// inputs from the ops' tensors.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/full.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "cuda/attention.cuh"
#include "cuda/host.h"

namespace fastbert::cuda {

// qkv (rows, 3H) or (B, L, 3H) with H = num_heads * head_dim, head_dim 1 to 128; qkv_bias (3H,) or none.
inline void check_qkv(const at::Tensor& qkv, const std::optional<at::Tensor>& qkv_bias, int64_t num_heads,
                      const char* op) {
  check_cuda(qkv, op, "qkv");
  check_float_dtype(qkv, op, "qkv");
  TORCH_CHECK_VALUE(num_heads > 0, op, ": num_heads must be > 0, got ", num_heads);
  const int64_t H3 = qkv.size(-1);
  TORCH_CHECK(H3 > 0 && H3 % (3 * num_heads) == 0, op, ": qkv's last dimension ", H3,
              " must be 3 * num_heads * head_dim (num_heads = ", num_heads, ")");
  const int64_t d = H3 / 3 / num_heads;
  TORCH_CHECK(d <= 128, op, ": head_dim ", d, " is not supported by the CUDA kernel (1 to 128)");
  if (qkv_bias) {
    TORCH_CHECK(qkv_bias->dim() == 1 && qkv_bias->size(0) == H3, op, ": qkv_bias must have shape (", H3, ",), got ",
                qkv_bias->sizes());
    TORCH_CHECK(qkv_bias->scalar_type() == qkv.scalar_type(), op, ": qkv_bias dtype ", qkv_bias->scalar_type(),
                " must match qkv dtype ", qkv.scalar_type());
    check_same_device(*qkv_bias, qkv, op, "qkv_bias");
  }
}

// The packed ops' cu_seqlens (B + 1,) int32 on qkv's device, and max_seqlen; the kernels check the values.
inline void check_cu_seqlens(const at::Tensor& cu_seqlens, int64_t max_seqlen, const at::Tensor& qkv, const char* op) {
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1 && cu_seqlens.scalar_type() == at::kInt, op,
              ": cu_seqlens must be an int32 tensor of shape (batch + 1,), got ", cu_seqlens.scalar_type(), " ",
              cu_seqlens.sizes());
  check_same_device(cu_seqlens, qkv, op, "cu_seqlens");
  TORCH_CHECK_VALUE(max_seqlen >= 0, op, ": max_seqlen must be >= 0, got ", max_seqlen);
  TORCH_CHECK(qkv.size(0) <= INT32_MAX, op, ": at most 2^31-1 tokens, got ", qkv.size(0));
}

inline void check_dropout(double dropout_p, const char* op) {
  TORCH_CHECK_VALUE(dropout_p >= 0.0 && dropout_p < 1.0, op, ": dropout_p must be in [0, 1), got ", dropout_p);
}

// The kernels' grid is (row blocks, num_heads, B): within CUDA's limits.
inline void check_grid(int64_t B, int64_t num_heads, const char* op) {
  TORCH_CHECK(B <= 65535, op, ": at most 65535 sequences per call on CUDA, got ", B);
  TORCH_CHECK(num_heads <= 65535, op, ": at most 65535 heads on CUDA, got ", num_heads);
}

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
  at::Tensor additive =
      mask.scalar_type() == at::kBool
          ? at::where(mask, at::zeros({}, f32), at::full({}, -std::numeric_limits<float>::infinity(), f32))
          : mask.to(at::kFloat);
  return additive.expand({B, nh, L, L});
}

// The kernels' inputs (attention.cuh) from contiguous qkv and bias (undefined when absent): the packed layout
// of cu_seqlens (B + 1,) int32 and max_seqlen, or the padded (B, L, 3H) layout with an additive mask from
// additive_attention_mask().
template <typename T>
AttentionInputs<T> packed_attention_inputs(const at::Tensor& qkv, const at::Tensor& bias, const at::Tensor& cu_seqlens,
                                           int64_t max_seqlen, int64_t num_heads, double scale, double dropout_p,
                                           int64_t seed, int64_t offset) {
  return attention_inputs(AttentionInputs<T>{.qkv = qkv.const_data_ptr<T>(),
                                             .bias = bias.defined() ? bias.const_data_ptr<T>() : nullptr,
                                             .cu_seqlens = cu_seqlens.const_data_ptr<int32_t>(),
                                             .B = cu_seqlens.size(0) - 1,
                                             .total = qkv.size(0),
                                             .max_seqlen = max_seqlen,
                                             .H = static_cast<int>(qkv.size(-1) / 3),
                                             .nh = static_cast<int>(num_heads),
                                             .scale = static_cast<float>(scale),
                                             .dropout = make_dropout_params(dropout_p, seed, offset)});
}

template <typename T>
AttentionInputs<T> padded_attention_inputs(const at::Tensor& qkv, const at::Tensor& bias, const at::Tensor& additive,
                                           int64_t num_heads, double scale, double dropout_p, int64_t seed,
                                           int64_t offset) {
  return attention_inputs(AttentionInputs<T>{.qkv = qkv.const_data_ptr<T>(),
                                             .bias = bias.defined() ? bias.const_data_ptr<T>() : nullptr,
                                             .B = qkv.size(0),
                                             .L = qkv.size(1),
                                             .H = static_cast<int>(qkv.size(-1) / 3),
                                             .nh = static_cast<int>(num_heads),
                                             .scale = static_cast<float>(scale),
                                             .mask = additive.const_data_ptr<float>(),
                                             .ms_b = additive.stride(0),
                                             .ms_h = additive.stride(1),
                                             .ms_i = additive.stride(2),
                                             .ms_j = additive.stride(3),
                                             .dropout = make_dropout_params(dropout_p, seed, offset)});
}

}  // namespace fastbert::cuda
