// attention_masked_backward: grad_qkv of the padded attention with an explicit mask (attention_masked).
//
// The same per-(sequence, head) FlashAttention backward as the packed op (csrc/cpu/attention_backward.h),
// over qkv (B, L, 3H) with the mask applied to each recomputed score row: bool (True = keep; False -> -inf)
// or additive float, read through its broadcast strides (B, nh, L, L), never materialised. The softmax is
// recomputed from the scores rather than taken from the saved lse: with HF's dtype-min additive mask a fully
// masked row has lse = min + log L, which rounds to min in fp32, and exp(S - lse) would give L times the
// row's probabilities. Rows with nothing to attend to (bool mask all False) get zero gradients. Dropout rows:
// (b * nh + h) * L + query. The mask gets no gradient. Parallel over (b, h) tasks.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "cpu/attention_args.h"
#include "cpu/attention_backward.h"
#include "cpu/isa.h"

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

// grad_out, out: (B, L, H); qkv, grad_qkv: (B, L, 3H); mask: expanded to (B, nh, L, L) (any strides), bool or
// the accumulation type
void attention_masked_backward_kernel(const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor* bias,
                                      const at::Tensor& mask, const at::Tensor& out, int64_t num_heads, double scale,
                                      double dropout_p, int64_t seed, int64_t offset, at::Tensor& grad_qkv) {
  const int64_t B = qkv.size(0), L = qkv.size(1), H = qkv.size(2) / 3, nh = num_heads, d = H / nh;
  const int64_t sb = mask.stride(0), sh = mask.stride(1), si = mask.stride(2), sj = mask.stride(3);
  const bool is_bool = mask.scalar_type() == at::kBool;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, qkv.scalar_type(), "attention_masked_backward", [&] {
    using A = acc_t<scalar_t>;
    const auto io =
        attn_bwd_io<scalar_t>(qkv, bias, grad_out, out, grad_qkv, num_heads, scale, dropout_p, seed, offset);
    const bool* mb = is_bool ? mask.const_data_ptr<bool>() : nullptr;
    const A* mf = is_bool ? nullptr : mask.const_data_ptr<A>();
    at::parallel_for(0, B * nh, 1, [&](int64_t t0, int64_t t1) {
      AttnBwdScratch<A> buf(L, d);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / nh, h = t % nh;
        auto mask_row = [&](int64_t i, A* s) {
          const int64_t base = b * sb + h * sh + i * si;
          if (is_bool) {
            for (int64_t j = 0; j < L; ++j)
              if (!mb[base + j * sj]) s[j] = -std::numeric_limits<A>::infinity();
          } else {
            for (int64_t j = 0; j < L; ++j) s[j] += mf[base + j * sj];
          }
        };
        attention_backward_task<scalar_t>(io, b * L, L, h, nullptr, static_cast<uint64_t>((b * nh + h) * L),
                                          /*recompute_softmax=*/true, mask_row, buf);
      }
    });
  });
}

}  // namespace CPU_CAPABILITY

#ifdef CPU_CAPABILITY_DEFAULT
FASTBERT_CPU_DECLARE(void attention_masked_backward_kernel(const at::Tensor&, const at::Tensor&, const at::Tensor*,
                                                           const at::Tensor&, const at::Tensor&, int64_t, double,
                                                           double, int64_t, int64_t, at::Tensor&))

at::Tensor attention_masked_backward_cpu(const at::Tensor& grad_out, const at::Tensor& qkv,
                                         const std::optional<at::Tensor>& qkv_bias, const at::Tensor& mask,
                                         const at::Tensor& out, const at::Tensor& lse, int64_t num_heads, double scale,
                                         double dropout_p, int64_t seed, int64_t offset) {
  const char* op = "attention_masked_backward";
  TORCH_CHECK(qkv.dim() == 3, op, ": qkv must have shape (batch, seqlen, 3 * hidden), got ", qkv.sizes());
  check_attention_args(op, qkv, qkv_bias, num_heads, dropout_p);
  const int64_t B = qkv.size(0), L = qkv.size(1), H3 = qkv.size(2), H = H3 / 3;
  check_backward_inputs(op, grad_out, out, lse, qkv, {B, L, H}, {B, num_heads, L});
  check_attention_mask(op, mask, B, num_heads, L);
  auto grad_qkv = at::zeros({B, L, H3}, qkv.options());
  if (B * L > 0) {
    const at::Tensor m = expanded_attention_mask(mask, qkv.scalar_type(), B, num_heads, L);
    at::Tensor bc = qkv_bias ? qkv_bias->contiguous() : at::Tensor();
    FASTBERT_CPU_DISPATCH(attention_masked_backward_kernel, grad_out.contiguous(), qkv.contiguous(),
                          qkv_bias ? &bc : nullptr, m, out.contiguous(), num_heads, scale, dropout_p, seed, offset,
                          grad_qkv);
  }
  return grad_qkv;
}

TORCH_LIBRARY_IMPL(fastbert, CPU, m) { m.impl("attention_masked_backward", &attention_masked_backward_cpu); }
#endif

}  // namespace fastbert::cpu
