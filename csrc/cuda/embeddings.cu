// embeddings on CUDA: argument checks and the launch of csrc/cuda/embeddings.cuh (see its comment).
// Ids out of range stop the kernel with a device-side assert (reported at the next synchronisation).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cuda/embeddings.cuh"
#include "cuda/host.h"
#include "cuda/layernorm_host.h"

namespace fastbert::cuda {

namespace {
void check_table(const at::Tensor& t, const at::Tensor& word, int64_t H, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.size(1) == H, "embeddings: ", name, " must have shape (N, ", H, "), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == word.scalar_type(), "embeddings: ", name, " dtype ", t.scalar_type(),
              " must match word_weight dtype ", word.scalar_type());
  check_same_device(t, word, "embeddings", name);
}
void check_ids(const at::Tensor& t, const at::Tensor& ids, const at::Tensor& word, const char* name) {
  TORCH_CHECK(t.scalar_type() == ids.scalar_type(), "embeddings: ", name, " must have input_ids' dtype ",
              ids.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == ids.sizes(), "embeddings: ", name, " must have input_ids' shape ", ids.sizes(), ", got ",
              t.sizes());
  check_same_device(t, word, "embeddings", name);
}
void check_vector(const at::Tensor& t, const at::Tensor& word, int64_t H, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == H, "embeddings: ", name, " must have shape (", H, ",), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == word.scalar_type(), "embeddings: ", name, " dtype ", t.scalar_type(),
              " must match word_weight dtype ", word.scalar_type());
  check_same_device(t, word, "embeddings", name);
}
}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> embeddings_cuda(
    const at::Tensor& input_ids, const at::Tensor& position_ids, const std::optional<at::Tensor>& token_type_ids,
    const at::Tensor& word_weight, const at::Tensor& position_weight,
    const std::optional<at::Tensor>& token_type_weight, const at::Tensor& ln_weight, const at::Tensor& ln_bias,
    double eps) {
  TORCH_CHECK(input_ids.scalar_type() == at::kLong || input_ids.scalar_type() == at::kInt,
              "embeddings: input_ids must be int64 or int32, got ", input_ids.scalar_type());
  TORCH_CHECK(word_weight.dim() == 2 && word_weight.size(1) > 0,
              "embeddings: word_weight must have shape (vocab, H) with H > 0, got ", word_weight.sizes());
  check_cuda(word_weight, "embeddings", "word_weight");
  check_float_dtype(word_weight, "embeddings", "word_weight");
  check_same_device(input_ids, word_weight, "embeddings", "input_ids");
  TORCH_CHECK_VALUE(eps >= 0, "embeddings: eps must be >= 0, got ", eps);
  const int64_t H = word_weight.size(1);
  check_ids(position_ids, input_ids, word_weight, "position_ids");
  TORCH_CHECK(!token_type_ids || token_type_weight, "embeddings: token_type_ids given without token_type_weight");
  if (token_type_ids) check_ids(*token_type_ids, input_ids, word_weight, "token_type_ids");
  check_table(position_weight, word_weight, H, "position_weight");
  if (token_type_weight) check_table(*token_type_weight, word_weight, H, "token_type_weight");
  check_vector(ln_weight, word_weight, H, "ln_weight");
  check_vector(ln_bias, word_weight, H, "ln_bias");
  check_layernorm_hidden(H, "embeddings");

  auto ids = input_ids.contiguous();
  auto pids = position_ids.contiguous();
  auto tids = token_type_ids ? token_type_ids->contiguous() : at::Tensor();
  auto word = word_weight.contiguous();
  auto pos = position_weight.contiguous();
  auto type = token_type_weight ? token_type_weight->contiguous() : at::Tensor();
  auto wc = ln_weight.contiguous();
  auto lc = ln_bias.contiguous();
  std::vector<int64_t> shape(ids.sizes().begin(), ids.sizes().end());
  auto mean = at::empty(shape, word.options().dtype(at::kFloat));
  auto rstd = at::empty(shape, word.options().dtype(at::kFloat));
  shape.push_back(H);
  auto out = at::empty(shape, word.options());
  const int64_t N = ids.numel();
  if (N == 0) return {out, mean, rstd};
  const c10::cuda::CUDAGuard guard(word.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FASTBERT_DISPATCH_FLOAT(word.scalar_type(), "embeddings", [&] {
    auto run = [&](auto id_tag) {
      using I = decltype(id_tag);
      const auto p = embeddings_params(EmbeddingsParams<scalar_t, I>{
          .ids = ids.const_data_ptr<I>(),
          .pos_ids = pids.const_data_ptr<I>(),
          .type_ids = token_type_ids ? tids.const_data_ptr<I>() : nullptr,
          .word = word.const_data_ptr<scalar_t>(),
          .pos = pos.const_data_ptr<scalar_t>(),
          .type = token_type_weight ? type.const_data_ptr<scalar_t>() : nullptr,
          .gamma = wc.const_data_ptr<scalar_t>(),
          .beta = lc.const_data_ptr<scalar_t>(),
          .out = out.mutable_data_ptr<scalar_t>(),
          .mean = mean.mutable_data_ptr<float>(),
          .rstd = rstd.mutable_data_ptr<float>(),
          .N = N,
          .H = H,
          .V = word.size(0),
          .P = pos.size(0),
          .TT = token_type_weight ? type.size(0) : 0,
          .eps = static_cast<float>(eps)});
      launch(embeddings_launch(p), stream, p);
    };
    if (ids.scalar_type() == at::kLong) run(int64_t{});
    else run(int32_t{});
  });
  return {out, mean, rstd};
}

TORCH_LIBRARY_IMPL(fastbert, CUDA, m) { m.impl("embeddings", &embeddings_cuda); }

}  // namespace fastbert::cuda
