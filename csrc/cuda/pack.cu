// pack / unpack on CUDA: argument checks and the launches of csrc/cuda/pack.cuh (see its comment).
//
// pack's output size T is data-dependent: after the count and scan kernels the host reads T = cu_seqlens[B]
// (one device-to-host copy, which synchronises the current stream), then allocates indices and positions and
// launches the write kernel. Everything else stays on the stream.
#include <ATen/ops/empty.h>
#include <ATen/ops/ne.h>
#include <torch/library.h>

#include "cuda/host.h"
#include "cuda/pack.cuh"

namespace fastbert::cuda {

std::tuple<at::Tensor, at::Tensor, at::Tensor> pack_cuda(const at::Tensor& attention_mask) {
  TORCH_CHECK(attention_mask.dim() == 2, "pack: attention_mask must have shape (batch, seqlen), got ",
              attention_mask.sizes());
  check_cuda(attention_mask, "pack", "attention_mask");
  const int64_t B = attention_mask.size(0), L = attention_mask.size(1);
  TORCH_CHECK(B * L <= INT32_MAX, "pack: more than 2^31-1 mask elements (", B, " x ", L, ")");
  TORCH_CHECK(B <= INT32_MAX, "pack: batch ", B, " too large");
  const c10::cuda::CUDAGuard guard(attention_mask.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  auto keep = attention_mask.scalar_type() == at::kBool ? attention_mask.contiguous() : attention_mask.ne(0);
  auto opts = attention_mask.options();
  auto cu_seqlens = at::empty({B + 1}, opts.dtype(at::kInt));
  auto counts = at::empty({B}, opts.dtype(at::kInt));
  const bool* kp = keep.const_data_ptr<bool>();
  if (B > 0) launch(pack_rows_launch(&pack_count_kernel, B), stream, kp, L, counts.mutable_data_ptr<int32_t>());
  launch(pack_scan_launch(), stream, counts.const_data_ptr<int32_t>(), B, cu_seqlens.mutable_data_ptr<int32_t>());
  const int64_t T = cu_seqlens[B].item<int32_t>();  // device-to-host copy: synchronises the stream
  auto indices = at::empty({T}, opts.dtype(at::kLong));
  auto positions = at::empty({T}, opts.dtype(at::kLong));
  if (T > 0)
    launch(pack_rows_launch(&pack_write_kernel, B), stream, kp, L, cu_seqlens.const_data_ptr<int32_t>(),
           indices.mutable_data_ptr<int64_t>(), positions.mutable_data_ptr<int64_t>());
  return {indices, cu_seqlens, positions};
}

at::Tensor unpack_cuda(const at::Tensor& x, const at::Tensor& indices, int64_t batch, int64_t seqlen) {
  TORCH_CHECK(x.dim() == 2, "unpack: x must have shape (tokens, H), got ", x.sizes());
  check_cuda(x, "unpack", "x");
  check_same_device(indices, x, "unpack", "indices");
  TORCH_CHECK(indices.dim() == 1 && indices.scalar_type() == at::kLong && indices.size(0) == x.size(0),
              "unpack: indices must be an int64 tensor of shape (", x.size(0), ",), got ", indices.scalar_type(), " ",
              indices.sizes());
  TORCH_CHECK_VALUE(batch >= 0 && seqlen >= 0, "unpack: batch and seqlen must be >= 0, got ", batch, ", ", seqlen);
  const int64_t T = x.size(0), H = x.size(1), N = batch * seqlen;
  TORCH_CHECK(T <= INT32_MAX && N <= INT32_MAX, "unpack: more than 2^31-1 rows");
  auto out = at::empty({batch, seqlen, H}, x.options());
  const int64_t row_bytes = H * static_cast<int64_t>(x.element_size());
  if (N == 0 || row_bytes == 0) return out;
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  auto xc = x.contiguous();
  auto ic = indices.contiguous();
  auto inv = at::empty({N}, x.options().dtype(at::kInt));
  int32_t* iv = inv.mutable_data_ptr<int32_t>();
  launch(unpack_launch(&unpack_fill_kernel, N), stream, iv, N);
  if (T > 0) launch(unpack_launch(&unpack_scatter_kernel, T), stream, ic.const_data_ptr<int64_t>(), T, N, iv);
  const auto p = unpack_copy_params(xc.const_data_ptr(), iv, out.mutable_data_ptr(), N, row_bytes);
  launch(unpack_copy_launch(p), stream, p);
  return out;
}

TORCH_LIBRARY_IMPL(fastbert, CUDA, m) {
  m.impl("pack", &pack_cuda);
  m.impl("unpack", &unpack_cuda);
}

}  // namespace fastbert::cuda
