// encoder_layers: BERT's whole layer stack for inference in one op, on the packed (T, H) rows of real tokens.
//
// Why one op: at the batch sizes that keep a GPU busy for a millisecond or two per forward, the host is the
// bottleneck. A layer is 8 calls (4 GEMMs, attention, bias+activation, 2 bias+residual+LayerNorm); from Python each
// costs 10-35 us of interpreter and dispatch on the machines we measured, so 12 layers spend 1-4 ms on the host for
// about 1.3 ms of GPU work (docs/gpu.md). Here each call is a typed dispatcher call below autograd, a few us.
//
// The arithmetic is that of fastbert.runtime.layers, op for op: the fused QKV GEMM, attention with the bias added on
// load, the output GEMM and bias+residual+LayerNorm, the MLP's GEMM, bias+activation, GEMM, bias+residual+LayerNorm.
// The GEMMs are x @ W^T through at::mm, or for float32/bfloat16 on CPU oneDNN's inner product when the caller asks
// or hands a packed weight (fastbert.ops.gemm says why); the results are the per-layer path's bit for bit with the
// same GEMM library, except on packed (bfloat16) weights, where the MLP's bias and activation run in the GEMM's
// epilogue (linear_act: one bf16 rounding where the per-layer path has two).
// Inference only: an input that requires grad under grad mode is refused (the per-layer path trains).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "op_handles.h"

namespace fastbert {
namespace {

constexpr size_t kTensorsPerLayer = 12;  // see the schema's comment in csrc/fastbert.cpp

using OneDnnLinearSig = Tensor(const Tensor&, const Tensor&, const OptTensor&, c10::string_view,
                               c10::List<std::optional<c10::Scalar>>, std::optional<c10::string_view>);

const c10::TypedOperatorHandle<OneDnnLinearSig>& onednn_linear() {
  static const auto op = op_handle<OneDnnLinearSig>("mkldnn::_linear_pointwise");
  return op;
}

void check_packed(const Tensor& x, const Tensor& w) {
  TORCH_CHECK(w.scalar_type() == x.scalar_type() && w.dim() == 2 && w.size(1) == x.size(-1),
              "encoder_layers: a packed weight of dtype ", w.scalar_type(), " and shape ", w.sizes(),
              " cannot multiply x of dtype ", x.scalar_type(), " and shape ", x.sizes());
}

// x @ w^T (w as nn.Linear stores it, or packed into oneDNN's layout by fastbert.ops.gemm). oneDNN where it takes
// the operands as they are (and always for a packed weight, which only oneDNN reads); anything else gets at::mm,
// and with it at::mm's error message for a mismatched weight.
Tensor linear(const Tensor& x, const Tensor& w, bool onednn) {
  const bool packed = w.is_mkldnn();
  if (packed ||
      (onednn && x.device().is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) &&
       w.scalar_type() == x.scalar_type() && w.device() == x.device() && w.dim() == 2 && w.size(1) == x.size(-1))) {
    if (packed) check_packed(x, w);
    return onednn_linear().call(x, w, std::nullopt, "none", c10::List<std::optional<c10::Scalar>>(), std::nullopt);
  }
  return at::mm(x, w.t());
}

// The GEMM's own epilogue for an activation oneDNN applies to the fp32 accumulator as fastbert's kernel does
// (attr and algorithm of mkldnn::_linear_pointwise), or nullptr: GELU (erf and tanh forms), ReLU, SiLU.
struct PostOp {
  const char* attr;
  const char* algorithm;
};
const PostOp* onednn_post_op(c10::string_view activation) {
  static const PostOp gelu{"gelu", "none"}, gelu_tanh{"gelu", "tanh"}, relu{"relu", ""}, silu{"swish", ""};
  if (activation == "gelu") return &gelu;
  if (activation == "gelu_new" || activation == "gelu_pytorch_tanh") return &gelu_tanh;
  if (activation == "relu") return &relu;
  if (activation == "silu" || activation == "swish") return &silu;
  return nullptr;
}

// activation(x @ w^T + bias). bfloat16 on a weight packed for oneDNN, with an activation it has: one call, bias and
// activation in the GEMM's epilogue on the fp32 accumulator, one rounding to bf16, and the (T, I) product never
// written and read back (4-6% of GEMM + bias_act at MiniLM's widths; docs/notes/2026-12-low-precision.md).
// float32 measured no faster that way. Elsewhere the GEMM, then bias_act.
Tensor linear_act(const Tensor& x, const Tensor& w, const Tensor& bias, c10::string_view activation, bool onednn) {
  const PostOp* post = w.is_mkldnn() && x.scalar_type() == at::kBFloat16 ? onednn_post_op(activation) : nullptr;
  if (post != nullptr && bias.scalar_type() == x.scalar_type() && bias.dim() == 1 && bias.size(0) == w.size(0) &&
      bias.is_contiguous() && bias.device() == x.device()) {
    check_packed(x, w);
    return onednn_linear().call(x, w, bias, post->attr, c10::List<std::optional<c10::Scalar>>(), post->algorithm);
  }
  static const auto bias_act = op_handle<BiasActSig>("fastbert::bias_act");
  return bias_act.call(linear(x, w, onednn), bias, activation);
}

Tensor required(const c10::List<OptTensor>& weights, size_t i, const char* what) {
  OptTensor t = weights.get(i);  // List::get returns a copy
  TORCH_CHECK(t.has_value(), "encoder_layers: layer ", i / kTensorsPerLayer, "'s ", what, " is missing");
  return *t;
}

std::vector<Tensor> encoder_layers(const Tensor& x_in, const Tensor& cu_seqlens, int64_t max_seqlen, int64_t num_heads,
                                   double scale, c10::string_view activation, const c10::List<OptTensor>& weights,
                                   at::ArrayRef<double> eps, bool all_layers, bool onednn) {
  TORCH_CHECK(weights.size() % kTensorsPerLayer == 0, "encoder_layers: ", weights.size(),
              " weights is not a multiple of ", kTensorsPerLayer, " per layer");
  const size_t layers = weights.size() / kTensorsPerLayer;
  TORCH_CHECK(eps.size() == 2 * layers, "encoder_layers: expected 2 LayerNorm eps per layer (", 2 * layers, "), got ",
              eps.size());
  if (at::GradMode::is_enabled()) {
    bool grad = x_in.requires_grad();
    for (size_t i = 0; i < weights.size() && !grad; ++i) {
      const OptTensor t = weights.get(i);
      grad = t.has_value() && t->requires_grad();
    }
    TORCH_CHECK(!grad,
                "encoder_layers is inference-only and records no gradient: call it under torch.no_grad() "
                "or torch.inference_mode()");
  }
  static const auto attention = op_handle<AttnSig>("fastbert::attention");
  static const auto brln = op_handle<BrlnSig>("fastbert::bias_residual_layernorm");

  at::AutoDispatchBelowADInplaceOrView below;  // nothing records: straight to the kernels
  std::vector<Tensor> outputs;
  Tensor x = x_in;
  for (size_t l = 0; l < layers; ++l) {
    const size_t i = l * kTensorsPerLayer;
    auto w = [&](size_t k, const char* what) { return required(weights, i + k, what); };
    Tensor y;
    {
      const Tensor ctx = std::get<0>(attention.call(linear(x, w(0, "qkv weight"), onednn), weights.get(i + 1),
                                                    cu_seqlens, max_seqlen, num_heads, scale, 0.0, 0, 0));
      y = linear(ctx, w(2, "attention output weight"), onednn);
    }
    x = std::get<0>(brln.call(y, weights.get(i + 3), x, w(4, "LayerNorm weight"), w(5, "LayerNorm bias"), eps[2 * l]));
    {
      const Tensor h = linear_act(x, w(6, "intermediate weight"), w(7, "intermediate bias"), activation, onednn);
      y = linear(h, w(8, "output weight"), onednn);  // h (T, I) freed here, before the LayerNorm
    }
    x = std::get<0>(
        brln.call(y, weights.get(i + 9), x, w(10, "LayerNorm weight"), w(11, "LayerNorm bias"), eps[2 * l + 1]));
    y.reset();
    if (all_layers) outputs.push_back(x);
  }
  if (!all_layers) outputs.push_back(x);
  return outputs;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastbert, CPU, m) { m.impl("encoder_layers", &encoder_layers); }
// Weights packed into oneDNN's layout (fastbert.ops.gemm) are MkldnnCPU tensors: the same loop serves that key.
TORCH_LIBRARY_IMPL(fastbert, MkldnnCPU, m) { m.impl("encoder_layers", &encoder_layers); }
#ifdef FASTBERT_WITH_CUDA
TORCH_LIBRARY_IMPL(fastbert, CUDA, m) { m.impl("encoder_layers", &encoder_layers); }
#endif

}  // namespace fastbert
