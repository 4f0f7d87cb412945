// embeddings on CUDA: argument checks and the launch of csrc/cuda/embeddings.cuh (see its comment).
// Ids out of range stop the kernel with a device-side assert (reported at the next synchronisation).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cuda/embeddings.cuh"
#include "cuda/embeddings_host.h"
#include "cuda/host.h"
#include "cuda/layernorm_host.h"

namespace fastbert::cuda {

std::tuple<at::Tensor, at::Tensor, at::Tensor> embeddings_cuda(
    const at::Tensor& input_ids, const at::Tensor& position_ids, const std::optional<at::Tensor>& token_type_ids,
    const at::Tensor& word_weight, const at::Tensor& position_weight,
    const std::optional<at::Tensor>& token_type_weight, const at::Tensor& ln_weight, const at::Tensor& ln_bias,
    double eps) {
  const int64_t H = check_embeddings_inputs(input_ids, position_ids, token_type_ids, word_weight, position_weight,
                                            token_type_weight, ln_weight, &ln_bias, "embeddings");
  TORCH_CHECK_VALUE(eps >= 0, "embeddings: eps must be >= 0, got ", eps);
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
          make_embeddings_inputs<scalar_t, I>(ids, pids, tids, word, pos, type, wc), lc.const_data_ptr<scalar_t>(),
          out.mutable_data_ptr<scalar_t>(), mean.mutable_data_ptr<float>(), rstd.mutable_data_ptr<float>(),
          static_cast<float>(eps)});
      launch(embeddings_launch(p), stream, p);
    };
    if (ids.scalar_type() == at::kLong) run(int64_t{});
    else run(int32_t{});
  });
  return {out, mean, rstd};
}

TORCH_LIBRARY_IMPL(fastbert, CUDA, m) { m.impl("embeddings", &embeddings_cuda); }

}  // namespace fastbert::cuda
