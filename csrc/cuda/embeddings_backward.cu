// embeddings_backward on CUDA: argument checks and the launches of csrc/cuda/embeddings_backward.cuh (see its
// comment): the keys kernel (it checks the ids), the row kernel and the LayerNorm parameters' reduction, a stable sort
// of the row keys (ATen), then the two scatter kernels. Ids out of range stop the keys kernel with a device-side
// assert.
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "cuda/embeddings_backward.cuh"
#include "cuda/embeddings_host.h"
#include "cuda/host.h"
#include "cuda/layernorm_host.h"

namespace fastbert::cuda {

namespace {
constexpr const char* kOp = "embeddings_backward";

void check_stat(const at::Tensor& t, const at::Tensor& ids, const at::Tensor& word, const char* name) {
  TORCH_CHECK(t.sizes() == ids.sizes(), kOp, ": ", name, " must have input_ids' shape ", ids.sizes(), ", got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, kOp, ": ", name, " must be float32 (the forward's statistics), got ",
              t.scalar_type());
  check_same_device(t, word, kOp, name);
}
}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> embeddings_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& input_ids, const at::Tensor& position_ids,
    const std::optional<at::Tensor>& token_type_ids, const at::Tensor& word_weight, const at::Tensor& position_weight,
    const std::optional<at::Tensor>& token_type_weight, const at::Tensor& ln_weight, const at::Tensor& mean,
    const at::Tensor& rstd) {
  const int64_t H = check_embeddings_inputs(input_ids, position_ids, token_type_ids, word_weight, position_weight,
                                            token_type_weight, ln_weight, nullptr, kOp);
  auto out_shape = input_ids.sizes().vec();
  out_shape.push_back(H);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(out_shape), kOp, ": grad_out must have shape ",
              at::IntArrayRef(out_shape), " (input_ids' shape + (H,)), got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == word_weight.scalar_type(), kOp, ": grad_out dtype ", grad_out.scalar_type(),
              " must match word_weight dtype ", word_weight.scalar_type());
  check_same_device(grad_out, word_weight, kOp, "grad_out");
  check_stat(mean, input_ids, word_weight, "mean");
  check_stat(rstd, input_ids, word_weight, "rstd");

  const auto opts = word_weight.options();
  auto g_word = at::zeros(word_weight.sizes(), opts);
  auto g_pos = at::zeros(position_weight.sizes(), opts);
  auto g_tt = token_type_weight ? at::zeros(token_type_weight->sizes(), opts) : at::zeros({0, H}, opts);
  auto g_w = at::zeros({H}, ln_weight.options());
  auto g_b = at::zeros({H}, ln_weight.options());
  const int64_t N = input_ids.numel();
  if (N == 0) return {g_word, g_pos, g_tt, g_w, g_b};

  const c10::cuda::CUDAGuard guard(word_weight.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t smem_limit = ln_backward_smem_limit(H, kOp);
  auto ids = input_ids.contiguous();
  auto pids = position_ids.contiguous();
  auto tids = token_type_ids ? token_type_ids->contiguous() : at::Tensor();
  auto word = word_weight.contiguous();
  auto pos = position_weight.contiguous();
  auto type = token_type_weight ? token_type_weight->contiguous() : at::Tensor();
  auto gamma = ln_weight.contiguous();
  auto go = grad_out.contiguous();
  auto mc = mean.contiguous();
  auto sc = rstd.contiguous();
  const int64_t tables = token_type_weight ? 3 : 2;
  const auto f32 = opts.dtype(at::kFloat);
  auto grad_s = at::empty({N, H}, f32);
  auto keys = at::empty({tables * N}, opts.dtype(at::kLong));

  FASTBERT_DISPATCH_FLOAT(word.scalar_type(), kOp, [&] {
    auto rows = [&](auto id_tag) {
      using I = decltype(id_tag);
      const auto l = embeddings_backward_rows_launch<scalar_t, I>(N, H, smem_limit);
      auto partials = at::empty({int64_t(l.grid.x), 2, H}, f32);
      const auto p = embeddings_backward_params(EmbeddingsBackwardParams<scalar_t, I>{
          make_embeddings_inputs<scalar_t, I>(ids, pids, tids, word, pos, type, gamma), go.const_data_ptr<scalar_t>(),
          mc.const_data_ptr<float>(), sc.const_data_ptr<float>(), grad_s.mutable_data_ptr<float>(),
          keys.mutable_data_ptr<int64_t>(), partials.mutable_data_ptr<float>()});
      launch(embeddings_keys_launch<scalar_t, I>(N), stream, p);
      launch(l, stream, p);
      launch(ln_backward_reduce_launch<scalar_t>(H), stream, p.partials, int64_t(l.grid.x), H,
             g_w.mutable_data_ptr<scalar_t>(), g_b.mutable_data_ptr<scalar_t>());
    };
    if (ids.scalar_type() == at::kLong) rows(int64_t{});
    else rows(int32_t{});

    // Stable: equal keys keep token order, so each table row sums its tokens in order.
    auto [sorted, perm] = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    const int64_t K = keys.numel();
    const auto scatter = embeddings_scatter_launch<scalar_t>(K, H, /*combine=*/false);
    auto ws = at::empty({int64_t(scatter.grid.x), 2, H}, f32);
    const EmbeddingsScatterParams<scalar_t> s{.sorted = sorted.const_data_ptr<int64_t>(),
                                              .perm = perm.const_data_ptr<int64_t>(),
                                              .grad_s = grad_s.const_data_ptr<float>(),
                                              .ws = ws.mutable_data_ptr<float>(),
                                              .word = g_word.mutable_data_ptr<scalar_t>(),
                                              .pos = g_pos.mutable_data_ptr<scalar_t>(),
                                              .type = token_type_weight ? g_tt.mutable_data_ptr<scalar_t>() : nullptr,
                                              .K = K,
                                              .N = N,
                                              .H = H,
                                              .V = word.size(0),
                                              .P = pos.size(0),
                                              .TT = token_type_weight ? type.size(0) : 0};
    launch(scatter, stream, s);
    launch(embeddings_scatter_launch<scalar_t>(K, H, /*combine=*/true), stream, s);
  });
  return {g_word, g_pos, g_tt, g_w, g_b};
}

TORCH_LIBRARY_IMPL(fastbert, CUDA, m) { m.impl("embeddings_backward", &embeddings_backward_cuda); }

}  // namespace fastbert::cuda
