// Autograd for the differentiable fused ops, registered in C++ at the Autograd key: each op records a node whose
// backward calls the op's `<name>_backward` kernel through the dispatcher (CPU or CUDA, whichever the tensors
// are on; under torch.compile, its fake implementation in the ops layer, fastbert.ops).
//
// Why C++ and not torch.library.register_autograd: that wraps every call of the op in a Python kernel, gradient
// or not. It cost about 5 us a call, and in a side-by-side run at T = 640 bias_residual_layernorm reached
// 0.56-0.72 of copy speed through it against 0.71-0.93 below autograd (docs/notes/2026-11-layernorm.md). Here a call
// that records nothing is one check and a redispatch.
//
// The backward formulas recompute what the forward did not keep rather than saving it: bias_act recomputes
// x + bias; the LayerNorm ops recompute the sum from their inputs and reuse the forward's fp32 (mean, rstd);
// attention recomputes the probabilities from the saved log-sum-exp and regenerates the dropout mask from
// (seed, offset). The statistics outputs (mean, rstd, lse) are non-differentiable. A bias's gradient is the
// row sum of the gradient it was broadcast into, accumulated in fp32 (fp64 for fp64).
#include <torch/autograd.h>
#include <torch/library.h>

#include "op_handles.h"

#include <initializer_list>
#include <numeric>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace fastbert {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool records(std::initializer_list<const Tensor*> tensors) {
  if (!at::GradMode::is_enabled()) return false;
  for (const Tensor* t : tensors) {
    if (t != nullptr && t->defined() && t->requires_grad()) return true;
  }
  return false;
}

const Tensor* ptr(const OptTensor& t) { return t ? &*t : nullptr; }
Tensor value_or_undefined(const OptTensor& t) { return t ? *t : Tensor(); }
OptTensor as_optional(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// Which forward arguments need a gradient, from the node's input edges: the forward's tensor arguments in
// order, an absent optional tensor having no edge. is_tensor lists, per forward argument, whether it is a tensor
// that is present.
std::vector<bool> needs_grad(AutogradContext* ctx, std::initializer_list<bool> is_tensor) {
  std::vector<bool> needs;
  size_t edge = 0;
  for (bool t : is_tensor) needs.push_back(t && ctx->needs_input_grad(edge++));
  return needs;
}

// A broadcast bias's gradient: grad summed over all but its last dimension, in fp32 (fp64), in like's dtype.
// (By dimension indices, never by sizes: under torch.compile the token count is a data-dependent symbol.)
Tensor row_sum(const Tensor& grad, const Tensor& like) {
  const auto acc = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  std::vector<int64_t> leading(grad.dim() - 1);
  std::iota(leading.begin(), leading.end(), 0);
  return grad.sum(leading, false, acc).to(like.scalar_type());
}

Tensor if_needed(bool need, const Tensor& grad) { return need ? grad : Tensor(); }

// ---------------------------------------------------------------- bias_act

struct BiasAct : torch::autograd::Function<BiasAct> {
  static const c10::TypedOperatorHandle<BiasActSig>& kernel() {  // the op below autograd
    static const auto op = op_handle<BiasActSig>("fastbert::bias_act");
    return op;
  }

  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& bias, const std::string& activation) {
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->save_for_backward({x, bias});
    ctx->saved_data["activation"] = activation;
    return kernel().call(x, bias, activation);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = op_handle<BiasActBackwardSig>("fastbert::bias_act_backward");
    const auto saved = ctx->get_saved_variables();
    const auto needs = needs_grad(ctx, {true, true, false});
    if (!needs[0] && !needs[1]) return {Tensor(), Tensor(), Tensor()};
    const Tensor grad_input = op.call(grads[0], saved[0], saved[1], ctx->saved_data["activation"].toStringRef());
    return {if_needed(needs[0], grad_input), needs[1] ? row_sum(grad_input, saved[1]) : Tensor(), Tensor()};
  }
};

Tensor bias_act_autograd(const Tensor& x, const Tensor& bias, c10::string_view activation) {
  if (!records({&x, &bias})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return BiasAct::kernel().call(x, bias, activation);
  }
  return BiasAct::apply(x, bias, std::string(activation));
}

// ---------------------------------------------------------------- bias_residual_layernorm

struct BiasResidualLayerNorm : torch::autograd::Function<BiasResidualLayerNorm> {
  static const c10::TypedOperatorHandle<BrlnSig>& kernel() {  // the op below autograd
    static const auto op = op_handle<BrlnSig>("fastbert::bias_residual_layernorm");
    return op;
  }

  static variable_list forward(AutogradContext* ctx, const Tensor& x, const OptTensor& bias, const Tensor& residual,
                               const Tensor& ln_weight, const Tensor& ln_bias, double eps) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [out, mean, rstd] = kernel().call(x, bias, residual, ln_weight, ln_bias, eps);
    ctx->mark_non_differentiable({mean, rstd});
    ctx->save_for_backward({x, value_or_undefined(bias), residual, ln_weight, mean, rstd});
    ctx->saved_data["has_bias"] = bias.has_value();
    return {out, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = op_handle<BrlnBackwardSig>("fastbert::bias_residual_layernorm_backward");
    const auto s = ctx->get_saved_variables();  // x, bias, residual, ln_weight, mean, rstd
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const auto needs = needs_grad(ctx, {true, has_bias, true, true, true, false});
    if (!(needs[0] || needs[1] || needs[2] || needs[3] || needs[4])) return variable_list(6);
    auto [grad_s, grad_w, grad_b] = op.call(grads[0], s[0], as_optional(s[1]), s[2], s[3], s[4], s[5]);
    return {if_needed(needs[0], grad_s), needs[1] ? row_sum(grad_s, s[1]) : Tensor(),
            if_needed(needs[2], grad_s), if_needed(needs[3], grad_w),
            if_needed(needs[4], grad_b), Tensor()};
  }
};

Tensor3 bias_residual_layernorm_autograd(const Tensor& x, const OptTensor& bias, const Tensor& residual,
                                         const Tensor& ln_weight, const Tensor& ln_bias, double eps) {
  if (!records({&x, ptr(bias), &residual, &ln_weight, &ln_bias})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return BiasResidualLayerNorm::kernel().call(x, bias, residual, ln_weight, ln_bias, eps);
  }
  auto outs = BiasResidualLayerNorm::apply(x, bias, residual, ln_weight, ln_bias, eps);
  return {outs[0], outs[1], outs[2]};
}

// ---------------------------------------------------------------- embeddings

struct Embeddings : torch::autograd::Function<Embeddings> {
  static const c10::TypedOperatorHandle<EmbSig>& kernel() {  // the op below autograd
    static const auto op = op_handle<EmbSig>("fastbert::embeddings");
    return op;
  }

  static variable_list forward(AutogradContext* ctx, const Tensor& ids, const Tensor& pos, const OptTensor& types,
                               const Tensor& word, const Tensor& position, const OptTensor& token_type,
                               const Tensor& ln_weight, const Tensor& ln_bias, double eps) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [out, mean, rstd] = kernel().call(ids, pos, types, word, position, token_type, ln_weight, ln_bias, eps);
    ctx->mark_non_differentiable({mean, rstd});
    ctx->save_for_backward(
        {ids, pos, value_or_undefined(types), word, position, value_or_undefined(token_type), ln_weight, mean, rstd});
    ctx->saved_data["has_types"] = types.has_value();
    ctx->saved_data["has_token_type"] = token_type.has_value();
    return {out, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = op_handle<EmbBackwardSig>("fastbert::embeddings_backward");
    const auto s = ctx->get_saved_variables();  // ids, pos, types, word, position, token_type, ln_weight, mean, rstd
    const bool has_tt = ctx->saved_data["has_token_type"].toBool();
    const auto needs =
        needs_grad(ctx, {true, true, ctx->saved_data["has_types"].toBool(), true, true, has_tt, true, true, false});
    if (!(needs[3] || needs[4] || needs[5] || needs[6] || needs[7])) return variable_list(9);
    auto [g_word, g_pos, g_tt, g_w, g_b] =
        op.call(grads[0], s[0], s[1], as_optional(s[2]), s[3], s[4], as_optional(s[5]), s[6], s[7], s[8]);
    return {Tensor(),
            Tensor(),
            Tensor(),
            if_needed(needs[3], g_word),
            if_needed(needs[4], g_pos),
            if_needed(needs[5], g_tt),
            if_needed(needs[6], g_w),
            if_needed(needs[7], g_b),
            Tensor()};
  }
};

Tensor3 embeddings_autograd(const Tensor& ids, const Tensor& pos, const OptTensor& types, const Tensor& word,
                            const Tensor& position, const OptTensor& token_type, const Tensor& ln_weight,
                            const Tensor& ln_bias, double eps) {
  if (!records({&word, &position, ptr(token_type), &ln_weight, &ln_bias})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return Embeddings::kernel().call(ids, pos, types, word, position, token_type, ln_weight, ln_bias, eps);
  }
  auto outs = Embeddings::apply(ids, pos, types, word, position, token_type, ln_weight, ln_bias, eps);
  return {outs[0], outs[1], outs[2]};
}

// ---------------------------------------------------------------- attention and attention_masked (the mask gets
// no gradient: an additive float mask is treated as a constant)

// What both attention backwards need besides their op's arguments; `third` is cu_seqlens or the mask.
void save_attention(AutogradContext* ctx, const Tensor& qkv, const OptTensor& qkv_bias, const Tensor& third,
                    const Tensor& out, const Tensor& lse, int64_t num_heads, double scale, double dropout_p,
                    int64_t seed, int64_t offset) {
  ctx->mark_non_differentiable({lse});
  ctx->save_for_backward({qkv, value_or_undefined(qkv_bias), third, out, lse});
  auto& d = ctx->saved_data;
  d["has_bias"] = qkv_bias.has_value();
  d["num_heads"] = num_heads;
  d["scale"] = scale;
  d["dropout_p"] = dropout_p;
  d["seed"] = seed;
  d["offset"] = offset;
}

// The gradients of an attention op's n_args arguments: qkv's and qkv_bias's (its row sum) from
// grad_qkv(saved, saved_data), run only when either is needed; none for the rest. qkv and qkv_bias are the
// node's first two input edges (qkv_bias only when given).
template <typename GradQkv>
variable_list attention_grads(AutogradContext* ctx, size_t n_args, GradQkv grad_qkv) {
  const bool need_qkv = ctx->needs_input_grad(0);
  const bool need_bias = ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(1);
  variable_list result(n_args);
  if (!need_qkv && !need_bias) return result;
  const auto s = ctx->get_saved_variables();  // qkv, qkv_bias, cu_seqlens or mask, out, lse
  const Tensor g = grad_qkv(s, ctx->saved_data);
  result[0] = if_needed(need_qkv, g);
  if (need_bias) result[1] = row_sum(g, s[1]);
  return result;
}

struct Attention : torch::autograd::Function<Attention> {
  static const c10::TypedOperatorHandle<AttnSig>& kernel() {  // the op below autograd
    static const auto op = op_handle<AttnSig>("fastbert::attention");
    return op;
  }

  static variable_list forward(AutogradContext* ctx, const Tensor& qkv, const OptTensor& qkv_bias,
                               const Tensor& cu_seqlens, int64_t max_seqlen, int64_t num_heads, double scale,
                               double dropout_p, int64_t seed, int64_t offset) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [out, lse] = kernel().call(qkv, qkv_bias, cu_seqlens, max_seqlen, num_heads, scale, dropout_p, seed, offset);
    save_attention(ctx, qkv, qkv_bias, cu_seqlens, out, lse, num_heads, scale, dropout_p, seed, offset);
    ctx->saved_data["max_seqlen"] = max_seqlen;
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = op_handle<AttnBackwardSig>("fastbert::attention_backward");
    return attention_grads(ctx, 9, [&](const variable_list& s, auto& d) {
      return op.call(grads[0], s[0], as_optional(s[1]), s[3], s[4], s[2], d["max_seqlen"].toInt(),
                     d["num_heads"].toInt(), d["scale"].toDouble(), d["dropout_p"].toDouble(), d["seed"].toInt(),
                     d["offset"].toInt());
    });
  }
};

Tensor2 attention_autograd(const Tensor& qkv, const OptTensor& qkv_bias, const Tensor& cu_seqlens, int64_t max_seqlen,
                           int64_t num_heads, double scale, double dropout_p, int64_t seed, int64_t offset) {
  if (!records({&qkv, ptr(qkv_bias)})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return Attention::kernel().call(qkv, qkv_bias, cu_seqlens, max_seqlen, num_heads, scale, dropout_p, seed, offset);
  }
  auto outs = Attention::apply(qkv, qkv_bias, cu_seqlens, max_seqlen, num_heads, scale, dropout_p, seed, offset);
  return {outs[0], outs[1]};
}

struct AttentionMasked : torch::autograd::Function<AttentionMasked> {
  static const c10::TypedOperatorHandle<MaskedSig>& kernel() {  // the op below autograd
    static const auto op = op_handle<MaskedSig>("fastbert::attention_masked");
    return op;
  }

  static variable_list forward(AutogradContext* ctx, const Tensor& qkv, const OptTensor& qkv_bias, const Tensor& mask,
                               int64_t num_heads, double scale, double dropout_p, int64_t seed, int64_t offset) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [out, lse] = kernel().call(qkv, qkv_bias, mask, num_heads, scale, dropout_p, seed, offset);
    save_attention(ctx, qkv, qkv_bias, mask, out, lse, num_heads, scale, dropout_p, seed, offset);
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = op_handle<MaskedBackwardSig>("fastbert::attention_masked_backward");
    return attention_grads(ctx, 8, [&](const variable_list& s, auto& d) {
      return op.call(grads[0], s[0], as_optional(s[1]), s[2], s[3], s[4], d["num_heads"].toInt(), d["scale"].toDouble(),
                     d["dropout_p"].toDouble(), d["seed"].toInt(), d["offset"].toInt());
    });
  }
};

Tensor2 attention_masked_autograd(const Tensor& qkv, const OptTensor& qkv_bias, const Tensor& mask, int64_t num_heads,
                                  double scale, double dropout_p, int64_t seed, int64_t offset) {
  if (!records({&qkv, ptr(qkv_bias)})) {
    at::AutoDispatchBelowADInplaceOrView below;
    return AttentionMasked::kernel().call(qkv, qkv_bias, mask, num_heads, scale, dropout_p, seed, offset);
  }
  auto outs = AttentionMasked::apply(qkv, qkv_bias, mask, num_heads, scale, dropout_p, seed, offset);
  return {outs[0], outs[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastbert, Autograd, m) {
  m.impl("bias_act", &bias_act_autograd);
  m.impl("bias_residual_layernorm", &bias_residual_layernorm_autograd);
  m.impl("embeddings", &embeddings_autograd);
  m.impl("attention", &attention_autograd);
  m.impl("attention_masked", &attention_masked_autograd);
}

}  // namespace fastbert
