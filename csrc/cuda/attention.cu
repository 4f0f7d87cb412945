// attention / attention_masked on CUDA: argument checks and the launch of csrc/cuda/attention_mma.cuh (fp16/bf16,
// sm_80+) or csrc/cuda/attention.cuh (fp32, or older GPUs).
//
// attention_masked turns its mask into an additive fp32 mask at the mask's own (broadcastable) shape first and
// passes the kernel the strides of its (B, nh, L, L) broadcast (csrc/cuda/attention_mask.h).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdlib>
#include <limits>
#include <string>
#include <type_traits>

#include "cuda/attention.cuh"
#include "cuda/attention_mma.cuh"
#include "cuda/attention_mask.h"
#include "cuda/host.h"

namespace fastbert::cuda {

namespace {

void check_qkv(const at::Tensor& qkv, const std::optional<at::Tensor>& qkv_bias, int64_t num_heads, const char* op) {
  check_cuda(qkv, op, "qkv");
  check_float_dtype(qkv, op, "qkv");
  TORCH_CHECK_VALUE(num_heads > 0, op, ": num_heads must be > 0, got ", num_heads);
  const int64_t H3 = qkv.size(-1);
  TORCH_CHECK(H3 % (3 * num_heads) == 0, op, ": qkv's last dimension ", H3, " must be 3 * num_heads * head_dim (",
              "num_heads = ", num_heads, ")");
  const int64_t d = H3 / 3 / num_heads;
  TORCH_CHECK(d > 0 && d <= 128, op, ": head_dim ", d, " is not supported by the CUDA kernel (1 to 128)");
  if (qkv_bias) {
    TORCH_CHECK(qkv_bias->dim() == 1 && qkv_bias->size(0) == H3, op, ": qkv_bias must have shape (", H3, ",), got ",
                qkv_bias->sizes());
    TORCH_CHECK(qkv_bias->scalar_type() == qkv.scalar_type(), op, ": qkv_bias dtype ", qkv_bias->scalar_type(),
                " must match qkv dtype ", qkv.scalar_type());
    check_same_device(*qkv_bias, qkv, op, "qkv_bias");
  }
}

void check_dropout(double p, const char* op) {
  TORCH_CHECK_VALUE(p >= 0.0 && p < 1.0, op, ": dropout_p must be in [0, 1), got ", p);
}

// fp16/bf16 run on the tensor cores (attention_mma.cuh) from sm_80 on, unless FASTBERT_CUDA_ATTENTION=fma asks
// for the fp32-FMA kernel (attention.cuh), which serves fp32 and older GPUs.
bool use_tensor_cores() {
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

template <typename T>
void launch(const AttentionParams<T>& p, int64_t B, int64_t max_seqlen, cudaStream_t stream) {
  if constexpr (!std::is_same_v<T, float>) {
    if (use_tensor_cores()) {
      const dim3 grid(static_cast<unsigned>(ceil_div(max_seqlen, kMmaRows)), static_cast<unsigned>(p.nh),
                      static_cast<unsigned>(B));
      const size_t smem = static_cast<size_t>(attention_mma_smem_bytes(p.d));
      const int dmax = attention_mma_dmax(p.d);
      if (dmax == 32) attention_mma_kernel<T, 32><<<grid, kMmaThreads, smem, stream>>>(p);
      else if (dmax == 64) attention_mma_kernel<T, 64><<<grid, kMmaThreads, smem, stream>>>(p);
      else attention_mma_kernel<T, 128><<<grid, kMmaThreads, smem, stream>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
  }
  const int dmax = attention_dmax(p.d);
  const dim3 grid(static_cast<unsigned>(ceil_div(max_seqlen, attention_rows(dmax))), static_cast<unsigned>(p.nh),
                  static_cast<unsigned>(B));
  const size_t smem = static_cast<size_t>(attention_smem_bytes(p.d));
  if (dmax == 64) attention_kernel<T, 64><<<grid, kAttnThreads, smem, stream>>>(p);
  else attention_kernel<T, 128><<<grid, kAttnThreads, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> attention_cuda(const at::Tensor& qkv, const std::optional<at::Tensor>& qkv_bias,
                                                  const at::Tensor& cu_seqlens, int64_t max_seqlen,
                                                  int64_t num_heads, double scale, double dropout_p, int64_t seed,
                                                  int64_t offset) {
  TORCH_CHECK(qkv.dim() == 2, "attention: qkv must have shape (tokens, 3 * H), got ", qkv.sizes());
  check_qkv(qkv, qkv_bias, num_heads, "attention");
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1 && cu_seqlens.scalar_type() == at::kInt,
              "attention: cu_seqlens must be an int32 tensor of shape (batch + 1,), got ", cu_seqlens.scalar_type(),
              " ", cu_seqlens.sizes());
  check_same_device(cu_seqlens, qkv, "attention", "cu_seqlens");
  TORCH_CHECK_VALUE(max_seqlen >= 0, "attention: max_seqlen must be >= 0, got ", max_seqlen);
  check_dropout(dropout_p, "attention");
  const int64_t T = qkv.size(0), H = qkv.size(1) / 3, B = cu_seqlens.size(0) - 1;
  TORCH_CHECK(B <= 65535, "attention: at most 65535 sequences per call on CUDA, got ", B);
  TORCH_CHECK(T <= INT32_MAX, "attention: at most 2^31-1 tokens, got ", T);
  auto out = at::empty({T, H}, qkv.options());
  auto lse = at::empty({num_heads, T}, qkv.options().dtype(at::kFloat));
  if (T == 0 || B == 0 || max_seqlen == 0) return {out, lse};
  const c10::cuda::CUDAGuard guard(qkv.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  auto qc = qkv.contiguous();
  auto bc = qkv_bias ? qkv_bias->contiguous() : at::Tensor();
  auto cc = cu_seqlens.contiguous();
  FASTBERT_DISPATCH_FLOAT(qkv.scalar_type(), "attention", [&] {
    AttentionParams<scalar_t> p{};
    p.qkv = qc.const_data_ptr<scalar_t>();
    p.bias = qkv_bias ? bc.const_data_ptr<scalar_t>() : nullptr;
    p.out = out.mutable_data_ptr<scalar_t>();
    p.lse = lse.mutable_data_ptr<float>();
    p.cu_seqlens = cc.const_data_ptr<int32_t>();
    p.total = T;
    p.max_seqlen = max_seqlen;
    p.H = static_cast<int>(H);
    p.nh = static_cast<int>(num_heads);
    p.d = static_cast<int>(H / num_heads);
    p.scale = static_cast<float>(scale);
    p.dropout = make_dropout_params(dropout_p, seed, offset);
    p.vec = p.d % Vec16<scalar_t>::n == 0 && is_aligned16(p.qkv) && (!p.bias || is_aligned16(p.bias));
    launch(p, B, max_seqlen, stream);
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
  TORCH_CHECK(B <= 65535, "attention_masked: at most 65535 sequences per call on CUDA, got ", B);
  auto out = at::empty({B, L, H}, qkv.options());
  auto lse = at::empty({B, num_heads, L}, qkv.options().dtype(at::kFloat));
  if (B == 0 || L == 0) return {out, lse};
  const c10::cuda::CUDAGuard guard(qkv.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor additive = additive_attention_mask(mask, B, num_heads, L);
  auto qc = qkv.contiguous();
  auto bc = qkv_bias ? qkv_bias->contiguous() : at::Tensor();
  FASTBERT_DISPATCH_FLOAT(qkv.scalar_type(), "attention_masked", [&] {
    AttentionParams<scalar_t> p{};
    p.qkv = qc.const_data_ptr<scalar_t>();
    p.bias = qkv_bias ? bc.const_data_ptr<scalar_t>() : nullptr;
    p.out = out.mutable_data_ptr<scalar_t>();
    p.lse = lse.mutable_data_ptr<float>();
    p.cu_seqlens = nullptr;
    p.total = B * L;
    p.L = L;
    p.max_seqlen = L;
    p.H = static_cast<int>(H);
    p.nh = static_cast<int>(num_heads);
    p.d = static_cast<int>(H / num_heads);
    p.scale = static_cast<float>(scale);
    p.mask = additive.const_data_ptr<float>();
    p.ms_b = additive.stride(0);
    p.ms_h = additive.stride(1);
    p.ms_i = additive.stride(2);
    p.ms_j = additive.stride(3);
    p.dropout = make_dropout_params(dropout_p, seed, offset);
    p.vec = p.d % Vec16<scalar_t>::n == 0 && is_aligned16(p.qkv) && (!p.bias || is_aligned16(p.bias));
    launch(p, B, L, stream);
  });
  return {out, lse};
}

TORCH_LIBRARY_IMPL(fastbert, CUDA, m) {
  m.impl("attention", &attention_cuda);
  m.impl("attention_masked", &attention_masked_cuda);
}

}  // namespace fastbert::cuda
