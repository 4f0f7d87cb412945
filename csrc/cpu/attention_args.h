// The argument checks of the attention ops on the CPU, forward and backward, and the mask as their kernels read
// it (csrc/cpu/attention*.cpp; called from their default-ISA object only).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

namespace fastbert::cpu {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// qkv: a CPU tensor of a supported float dtype whose last dimension is 3 * hidden, hidden divisible by num_heads
// (> 0); qkv_bias: (3 * hidden,) of qkv's dtype on the CPU, or absent; dropout_p in [0, 1). Returns the head dim.
inline int64_t check_attention_args(const char* op, const at::Tensor& qkv, const std::optional<at::Tensor>& qkv_bias,
                                    int64_t num_heads, double dropout_p) {
  TORCH_CHECK(qkv.device().is_cpu(), op, ": qkv must be a CPU tensor, got ", qkv.device());
  TORCH_CHECK(is_supported_float(qkv.scalar_type()), op, ": qkv must be float32, float64, bfloat16 or float16, got ",
              qkv.scalar_type());
  TORCH_CHECK_VALUE(num_heads > 0, op, ": num_heads must be > 0, got ", num_heads);
  const int64_t H3 = qkv.size(-1);
  TORCH_CHECK(H3 > 0 && H3 % (3 * num_heads) == 0, op, ": qkv's last dimension (", H3,
              ") must be 3 * hidden with hidden divisible by num_heads = ", num_heads);
  if (qkv_bias.has_value() && qkv_bias->defined()) {
    const auto& bias = *qkv_bias;
    TORCH_CHECK(bias.device().is_cpu(), op, ": qkv_bias must be a CPU tensor, got ", bias.device());
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == H3, op, ": qkv_bias must have shape (", H3,
                ",) to match qkv's last dimension, got ", bias.sizes());
    TORCH_CHECK(bias.scalar_type() == qkv.scalar_type(), op, ": qkv_bias dtype ", bias.scalar_type(),
                " must match qkv dtype ", qkv.scalar_type());
  }
  TORCH_CHECK_VALUE(dropout_p >= 0.0 && dropout_p < 1.0, op, ": dropout_p must be in [0, 1), got ", dropout_p);
  return H3 / (3 * num_heads);
}

// cu_seqlens: a (B + 1,) int32 CPU tensor of offsets 0 = cu[0] <= cu[1] <= ... <= cu[B] = T, each sequence at
// most max_seqlen (>= 0) long. Returns the longest sequence's length.
inline int64_t check_cu_seqlens(const char* op, const at::Tensor& cu_seqlens, int64_t max_seqlen, int64_t T) {
  TORCH_CHECK(cu_seqlens.device().is_cpu(), op, ": cu_seqlens must be a CPU tensor, got ", cu_seqlens.device());
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1, op, ": cu_seqlens must have shape (batch + 1,), got ",
              cu_seqlens.sizes());
  TORCH_CHECK(cu_seqlens.scalar_type() == at::kInt, op, ": cu_seqlens must be int32, got ", cu_seqlens.scalar_type());
  TORCH_CHECK_VALUE(max_seqlen >= 0, op, ": max_seqlen must be >= 0, got ", max_seqlen);
  const at::Tensor cu = cu_seqlens.contiguous();
  const int32_t* cp = cu.const_data_ptr<int32_t>();
  const int64_t B = cu.size(0) - 1;
  TORCH_CHECK_VALUE(cp[0] == 0, op, ": cu_seqlens[0] must be 0, got ", cp[0]);
  int64_t longest = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = static_cast<int64_t>(cp[b + 1]) - cp[b];
    TORCH_CHECK_VALUE(n >= 0, op, ": cu_seqlens must be nondecreasing, but cu_seqlens[", b + 1, "] = ", cp[b + 1],
                      " < cu_seqlens[", b, "] = ", cp[b]);
    TORCH_CHECK_VALUE(n <= max_seqlen, op, ": sequence ", b, " has length ", n, " > max_seqlen = ", max_seqlen,
                      " (cu_seqlens[", b + 1, "] - cu_seqlens[", b, "])");
    longest = std::max(longest, n);
  }
  TORCH_CHECK_VALUE(cp[B] == T, op, ": cu_seqlens[-1] = ", cp[B], " must equal qkv.size(0) = T = ", T);
  return longest;
}

// mask: bool (True = keep) or floating (additive), on the CPU, broadcastable to (B, num_heads, L, L).
inline void check_attention_mask(const char* op, const at::Tensor& mask, int64_t B, int64_t num_heads, int64_t L) {
  TORCH_CHECK(mask.device().is_cpu(), op, ": mask must be a CPU tensor, got ", mask.device());
  TORCH_CHECK(mask.scalar_type() == at::kBool || is_supported_float(mask.scalar_type()), op,
              ": mask must be bool (True = keep) or floating (additive), got ", mask.scalar_type());
  const int64_t target[4] = {B, num_heads, L, L};
  bool broadcastable = mask.dim() <= 4;
  for (int64_t i = 0; broadcastable && i < mask.dim(); ++i) {
    const int64_t s = mask.size(mask.dim() - 1 - i);
    broadcastable = s == 1 || s == target[3 - i];
  }
  TORCH_CHECK(broadcastable, op, ": mask of shape ", mask.sizes(),
              " is not broadcastable to (batch, num_heads, seqlen, seqlen) = (", B, ", ", num_heads, ", ", L, ", ", L,
              ")");
}

// The mask as the kernels read it: bool, or floating in the accumulation type of qkv's dtype, expanded by strides
// (no copy) to (B, num_heads, L, L).
inline at::Tensor expanded_attention_mask(const at::Tensor& mask, at::ScalarType qkv_dtype, int64_t B,
                                          int64_t num_heads, int64_t L) {
  const at::Tensor m =
      mask.scalar_type() == at::kBool ? mask : mask.to(qkv_dtype == at::kDouble ? at::kDouble : at::kFloat);
  return m.expand({B, num_heads, L, L});
}

// The backward's grad_out and out (qkv's dtype, the forward's output shape) and lse (float32): CPU tensors.
inline void check_backward_inputs(const char* op, const at::Tensor& grad_out, const at::Tensor& out,
                                  const at::Tensor& lse, const at::Tensor& qkv, at::IntArrayRef out_shape,
                                  at::IntArrayRef lse_shape) {
  for (auto [t, name] : {std::pair{&grad_out, "grad_out"}, std::pair{&out, "out"}}) {
    TORCH_CHECK(t->sizes() == out_shape, op, ": ", name, " must have shape ", out_shape, ", got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == qkv.scalar_type() && t->device().is_cpu(), op, ": ", name,
                " must be a CPU tensor of qkv's dtype ", qkv.scalar_type(), ", got ", t->scalar_type());
  }
  TORCH_CHECK(lse.sizes() == lse_shape, op, ": lse must have shape ", lse_shape, ", got ", lse.sizes());
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.device().is_cpu(), op, ": lse must be a float32 CPU tensor, got ",
              lse.scalar_type());
}

}  // namespace fastbert::cpu
