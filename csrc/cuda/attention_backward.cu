// attention_backward / attention_masked_backward on CUDA: argument checks and the two launches of
// csrc/cuda/attention_backward.cuh (dQ + row statistics, then dK/dV), on the current stream.
//
// The kernels need a (3, nh * rows) fp32 workspace (D, shift, norm per query row) that kernel 1 writes and
// kernel 2 reads. attention_masked_backward turns its mask into an additive fp32 mask at the mask's own
// (broadcastable) shape, as the forward launcher does, and passes the strides of its (B, nh, L, L) broadcast;
// its saved lse is checked but not used (the statistics are recomputed, see the .cuh).
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "cuda/attention_backward.cuh"
#include "cuda/attention_host.h"
#include "cuda/host.h"

namespace fastbert::cuda {

namespace {

// grad_out and out: qkv's dtype and device, shape `shape`.
void check_like_qkv(const at::Tensor& t, const at::Tensor& qkv, at::IntArrayRef shape, const char* op,
                    const char* name) {
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == qkv.scalar_type(), op, ": ", name, " dtype ", t.scalar_type(),
              " must match qkv dtype ", qkv.scalar_type());
  check_same_device(t, qkv, op, name);
}

void check_lse(const at::Tensor& lse, const at::Tensor& qkv, at::IntArrayRef shape, const char* op) {
  TORCH_CHECK(lse.sizes() == shape, op, ": lse must have shape ", shape, ", got ", lse.sizes());
  TORCH_CHECK(lse.scalar_type() == at::kFloat, op, ": lse must be float32, got ", lse.scalar_type());
  check_same_device(lse, qkv, op, "lse");
}

}  // namespace

at::Tensor attention_backward_cuda(const at::Tensor& grad_out, const at::Tensor& qkv,
                                   const std::optional<at::Tensor>& qkv_bias, const at::Tensor& out,
                                   const at::Tensor& lse, const at::Tensor& cu_seqlens, int64_t max_seqlen,
                                   int64_t num_heads, double scale, double dropout_p, int64_t seed, int64_t offset) {
  const char* op = "attention_backward";
  TORCH_CHECK(qkv.dim() == 2, op, ": qkv must have shape (tokens, 3 * H), got ", qkv.sizes());
  check_qkv(qkv, qkv_bias, num_heads, op);
  const int64_t T = qkv.size(0), H = qkv.size(1) / 3, B = cu_seqlens.dim() == 1 ? cu_seqlens.size(0) - 1 : -1;
  check_like_qkv(grad_out, qkv, {T, H}, op, "grad_out");
  check_like_qkv(out, qkv, {T, H}, op, "out");
  check_lse(lse, qkv, {num_heads, T}, op);
  check_cu_seqlens(cu_seqlens, max_seqlen, qkv, op);
  check_dropout(dropout_p, op);
  check_grid(B, num_heads, op);
  if (T == 0) return at::empty({0, 3 * H}, qkv.options());
  // T > 0 with no sequence or max_seqlen 0 is a cu_seqlens / max_seqlen mismatch the kernel would catch; the
  // kernels do not run then, so no row is written: return zeros, never uninitialised memory.
  if (B == 0 || max_seqlen == 0) return at::zeros({T, 3 * H}, qkv.options());
  const c10::cuda::CUDAGuard guard(qkv.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  auto grad_qkv = at::empty({T, 3 * H}, qkv.options());
  auto ws = at::empty({3, num_heads * T}, qkv.options().dtype(at::kFloat));
  auto qc = qkv.contiguous(), oc = out.contiguous(), gc = grad_out.contiguous(), lc = lse.contiguous();
  auto bc = qkv_bias ? qkv_bias->contiguous() : at::Tensor();
  auto cc = cu_seqlens.contiguous();
  FASTBERT_DISPATCH_FLOAT(qkv.scalar_type(), "attention_backward", [&] {
    const auto p = attention_bwd_params(AttentionBwdParams<scalar_t>{
        packed_attention_inputs<scalar_t>(qc, bc, cc, max_seqlen, num_heads, scale, dropout_p, seed, offset),
        oc.const_data_ptr<scalar_t>(), gc.const_data_ptr<scalar_t>(), grad_qkv.mutable_data_ptr<scalar_t>(),
        lc.const_data_ptr<float>(), ws.mutable_data_ptr<float>()});
    const auto l = attention_bwd_launches(p);
    launch(l.dq, stream, p);
    launch(l.dkdv, stream, p);
  });
  return grad_qkv;
}

at::Tensor attention_masked_backward_cuda(const at::Tensor& grad_out, const at::Tensor& qkv,
                                          const std::optional<at::Tensor>& qkv_bias, const at::Tensor& mask,
                                          const at::Tensor& out, const at::Tensor& lse, int64_t num_heads, double scale,
                                          double dropout_p, int64_t seed, int64_t offset) {
  const char* op = "attention_masked_backward";
  TORCH_CHECK(qkv.dim() == 3, op, ": qkv must have shape (batch, seqlen, 3 * H), got ", qkv.sizes());
  check_qkv(qkv, qkv_bias, num_heads, op);
  const int64_t B = qkv.size(0), L = qkv.size(1), H = qkv.size(2) / 3;
  check_like_qkv(grad_out, qkv, {B, L, H}, op, "grad_out");
  check_like_qkv(out, qkv, {B, L, H}, op, "out");
  check_lse(lse, qkv, {B, num_heads, L}, op);
  check_dropout(dropout_p, op);
  check_attention_mask(mask, qkv, B, num_heads, L, op);
  check_grid(B, num_heads, op);
  auto grad_qkv = at::empty({B, L, 3 * H}, qkv.options());
  if (B == 0 || L == 0) return grad_qkv;
  const c10::cuda::CUDAGuard guard(qkv.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor additive = additive_attention_mask(mask, B, num_heads, L);
  auto ws = at::empty({3, B * num_heads * L}, qkv.options().dtype(at::kFloat));
  auto qc = qkv.contiguous(), oc = out.contiguous(), gc = grad_out.contiguous();
  auto bc = qkv_bias ? qkv_bias->contiguous() : at::Tensor();
  FASTBERT_DISPATCH_FLOAT(qkv.scalar_type(), "attention_masked_backward", [&] {
    const auto p = attention_bwd_params(AttentionBwdParams<scalar_t>{
        padded_attention_inputs<scalar_t>(qc, bc, additive, num_heads, scale, dropout_p, seed, offset),
        oc.const_data_ptr<scalar_t>(), gc.const_data_ptr<scalar_t>(), grad_qkv.mutable_data_ptr<scalar_t>(),
        /*lse: the statistics are recomputed*/ nullptr, ws.mutable_data_ptr<float>()});
    const auto l = attention_bwd_launches(p);
    launch(l.dq, stream, p);
    launch(l.dkdv, stream, p);
  });
  return grad_qkv;
}

TORCH_LIBRARY_IMPL(fastbert, CUDA, m) {
  m.impl("attention_backward", &attention_backward_cuda);
  m.impl("attention_masked_backward", &attention_masked_backward_cuda);
}

}  // namespace fastbert::cuda
