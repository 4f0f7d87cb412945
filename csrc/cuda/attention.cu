// attention / attention_masked on CUDA: argument checks and the launch of csrc/cuda/attention_mma.cuh (fp16/bf16,
// sm_80+) or csrc/cuda/attention.cuh (fp32, or older GPUs).
//
// attention_masked turns its mask into an additive fp32 mask at the mask's own (broadcastable) shape first and
// passes the kernel the strides of its (B, nh, L, L) broadcast (csrc/cuda/attention_host.h).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdlib>
#include <limits>
#include <string>
#include <type_traits>

#include "cuda/attention.cuh"
#include "cuda/attention_host.h"
#include "cuda/attention_mma.cuh"
#include "cuda/host.h"

namespace fastbert::cuda {

namespace {

// fp16/bf16 run on the tensor cores (attention_mma.cuh) from sm_80 on, unless FASTBERT_CUDA_ATTENTION=fma asks
// for the fp32-FMA kernel (attention.cuh), which serves fp32 and older GPUs.
template <typename T>
bool use_tensor_cores() {
  if (std::is_same_v<T, float>) return false;
  static const bool forced_fma = [] {
    const char* v = std::getenv("FASTBERT_CUDA_ATTENTION");
    return v != nullptr && std::string(v) == "fma";
  }();
  if (forced_fma) return false;
  int device = 0, major = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  return major >= 8;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> attention_cuda(const at::Tensor& qkv, const std::optional<at::Tensor>& qkv_bias,
                                                  const at::Tensor& cu_seqlens, int64_t max_seqlen, int64_t num_heads,
                                                  double scale, double dropout_p, int64_t seed, int64_t offset) {
  TORCH_CHECK(qkv.dim() == 2, "attention: qkv must have shape (tokens, 3 * H), got ", qkv.sizes());
  check_qkv(qkv, qkv_bias, num_heads, "attention");
  check_cu_seqlens(cu_seqlens, max_seqlen, qkv, "attention");
  check_dropout(dropout_p, "attention");
  const int64_t T = qkv.size(0), H = qkv.size(1) / 3, B = cu_seqlens.size(0) - 1;
  check_grid(B, num_heads, "attention");
  auto out = at::empty({T, H}, qkv.options());
  auto lse = at::empty({num_heads, T}, qkv.options().dtype(at::kFloat));
  if (T == 0 || B == 0 || max_seqlen == 0) return {out, lse};
  const c10::cuda::CUDAGuard guard(qkv.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  auto qc = qkv.contiguous();
  auto bc = qkv_bias ? qkv_bias->contiguous() : at::Tensor();
  auto cc = cu_seqlens.contiguous();
  FASTBERT_DISPATCH_FLOAT(qkv.scalar_type(), "attention", [&] {
    const AttentionParams<scalar_t> p{
        packed_attention_inputs<scalar_t>(qc, bc, cc, max_seqlen, num_heads, scale, dropout_p, seed, offset),
        out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<float>()};
    launch(attention_launch(p, use_tensor_cores<scalar_t>()), stream, p);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> attention_masked_cuda(const at::Tensor& qkv,
                                                         const std::optional<at::Tensor>& qkv_bias,
                                                         const at::Tensor& mask, int64_t num_heads, double scale,
                                                         double dropout_p, int64_t seed, int64_t offset) {
  TORCH_CHECK(qkv.dim() == 3, "attention_masked: qkv must have shape (batch, seqlen, 3 * H), got ", qkv.sizes());
  check_qkv(qkv, qkv_bias, num_heads, "attention_masked");
  check_dropout(dropout_p, "attention_masked");
  const int64_t B = qkv.size(0), L = qkv.size(1), H = qkv.size(2) / 3;
  check_attention_mask(mask, qkv, B, num_heads, L, "attention_masked");
  check_grid(B, num_heads, "attention_masked");
  auto out = at::empty({B, L, H}, qkv.options());
  auto lse = at::empty({B, num_heads, L}, qkv.options().dtype(at::kFloat));
  if (B == 0 || L == 0) return {out, lse};
  const c10::cuda::CUDAGuard guard(qkv.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor additive = additive_attention_mask(mask, B, num_heads, L);
  auto qc = qkv.contiguous();
  auto bc = qkv_bias ? qkv_bias->contiguous() : at::Tensor();
  FASTBERT_DISPATCH_FLOAT(qkv.scalar_type(), "attention_masked", [&] {
    const AttentionParams<scalar_t> p{
        padded_attention_inputs<scalar_t>(qc, bc, additive, num_heads, scale, dropout_p, seed, offset),
        out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<float>()};
    launch(attention_launch(p, use_tensor_cores<scalar_t>()), stream, p);
  });
  return {out, lse};
}

TORCH_LIBRARY_IMPL(fastbert, CUDA, m) {
  m.impl("attention", &attention_cuda);
  m.impl("attention_masked", &attention_masked_cuda);
}

}  // namespace fastbert::cuda
