// attention_backward: grad_qkv of the packed, ragged attention (csrc/cpu/attention.cpp), from grad_out.
//
// Nothing n x n is saved by the forward: each (sequence, head) task recomputes the probabilities from the
// saved log-sum-exp and regenerates the dropout mask from (seed, offset, head * T + token, key index), then
// runs FlashAttention's backward with the D_i = dO_i . O_i trick (csrc/cpu/attention_backward.h): five GEMMs
// on per-thread fp32 scratch (fp64 for double) and one elementwise pass. Tasks are handed out longest first
// from an atomic counter (a ragged batch's sequences differ in cost by n^2); each task writes only its head's
// columns of its rows of grad_qkv, so no two threads write the same element. grad_qkv_bias is the row sum of
// grad_qkv (csrc/autograd.cpp). float64 recomputes the softmax from the scores instead: the saved lse is
// float32 by the op's contract, and exp(S - lse) would cap float64 gradients at fp32 accuracy.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "cpu/attention_args.h"
#include "cpu/attention_backward.h"
#include "cpu/isa.h"

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

// grad_out, out: (T, H); qkv, grad_qkv: (T, 3H); lse: (nh, T) float32; cu: (B+1,) int32 (checked)
void attention_backward_kernel(const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor* bias,
                               const at::Tensor& out, const at::Tensor& lse, const std::vector<int64_t>& cu,
                               int64_t num_heads, double scale, double dropout_p, int64_t seed, int64_t offset,
                               at::Tensor& grad_qkv) {
  const int64_t T = qkv.size(0), H = qkv.size(1) / 3, nh = num_heads, d = H / nh;
  const int64_t B = static_cast<int64_t>(cu.size()) - 1;
  std::vector<std::pair<int64_t, int64_t>> tasks;  // (length, b * nh + h), longest first
  int64_t max_n = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = cu[b + 1] - cu[b];
    max_n = std::max(max_n, n);
    if (n > 0)
      for (int64_t h = 0; h < nh; ++h) tasks.emplace_back(n, b * nh + h);
  }
  std::stable_sort(tasks.begin(), tasks.end(), [](auto& x, auto& y) { return x.first > y.first; });
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, qkv.scalar_type(), "attention_backward", [&] {
    using A = acc_t<scalar_t>;
    const auto io =
        attn_bwd_io<scalar_t>(qkv, bias, grad_out, out, grad_qkv, num_heads, scale, dropout_p, seed, offset);
    const float* lsep = lse.const_data_ptr<float>();
    std::atomic<int64_t> next{0};
    const int64_t ntasks = static_cast<int64_t>(tasks.size());
    const int64_t workers = std::min<int64_t>(at::get_num_threads(), ntasks);
    at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
      AttnBwdScratch<A> buf(max_n, d);
      for (int64_t t; (t = next.fetch_add(1)) < ntasks;) {
        const int64_t b = tasks[t].second / nh, h = tasks[t].second % nh;
        const int64_t s0 = cu[b], n = cu[b + 1] - cu[b];
        attention_backward_task<scalar_t>(
            io, s0, n, h, lsep + h * T + s0, static_cast<uint64_t>(h * T + s0),
            /*recompute_softmax=*/std::is_same_v<A, double>, [](int64_t, A*) {}, buf);
      }
    });
  });
}

}  // namespace CPU_CAPABILITY

#ifdef CPU_CAPABILITY_DEFAULT
FASTBERT_CPU_DECLARE(void attention_backward_kernel(const at::Tensor&, const at::Tensor&, const at::Tensor*,
                                                    const at::Tensor&, const at::Tensor&, const std::vector<int64_t>&,
                                                    int64_t, double, double, int64_t, int64_t, at::Tensor&))

at::Tensor attention_backward_cpu(const at::Tensor& grad_out, const at::Tensor& qkv,
                                  const std::optional<at::Tensor>& qkv_bias, const at::Tensor& out,
                                  const at::Tensor& lse, const at::Tensor& cu_seqlens, int64_t max_seqlen,
                                  int64_t num_heads, double scale, double dropout_p, int64_t seed, int64_t offset) {
  const char* op = "attention_backward";
  TORCH_CHECK(qkv.dim() == 2, op, ": qkv must have shape (T, 3 * hidden), got ", qkv.sizes());
  check_attention_args(op, qkv, qkv_bias, num_heads, dropout_p);
  const int64_t T = qkv.size(0), H3 = qkv.size(1), H = H3 / 3;
  check_backward_inputs(op, grad_out, out, lse, qkv, {T, H}, {num_heads, T});
  check_cu_seqlens(op, cu_seqlens, max_seqlen, T);
  auto cuc = cu_seqlens.contiguous();
  const int32_t* cp = cuc.const_data_ptr<int32_t>();
  const std::vector<int64_t> cu(cp, cp + cuc.size(0));
  auto grad_qkv = at::zeros({T, H3}, qkv.options());
  if (T > 0) {
    at::Tensor bc = qkv_bias ? qkv_bias->contiguous() : at::Tensor();
    FASTBERT_CPU_DISPATCH(attention_backward_kernel, grad_out.contiguous(), qkv.contiguous(), qkv_bias ? &bc : nullptr,
                          out.contiguous(), lse.contiguous(), cu, num_heads, scale, dropout_p, seed, offset, grad_qkv);
  }
  return grad_qkv;
}

TORCH_LIBRARY_IMPL(fastbert, CPU, m) { m.impl("attention_backward", &attention_backward_cpu); }
#endif

}  // namespace fastbert::cpu
