// embeddings: out = LayerNorm(word[ids] + position[pos] + token_type[type]) for packed (real) tokens.
//
// Fuses BERT's embedding block: the unfused version gathers three (T, H) tensors, adds them in two passes and
// normalises in a fourth; here each token's three rows are gathered and summed straight into a per-thread
// fp32 scratch row, normalised (csrc/cpu/layernorm.h) and written once. Parallel over tokens. Ids are
// checked against the table sizes as they are read (an IndexError naming the argument, never a wild read).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cpu/embeddings.h"
#include "cpu/isa.h"
#include "cpu/layernorm.h"

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

template <typename index_t>
void embeddings_typed(const at::Tensor& ids, const at::Tensor& pos, const at::Tensor* types, const at::Tensor& word,
                      const at::Tensor& position, const at::Tensor* token_type, const at::Tensor& weight,
                      const at::Tensor& beta, double eps, at::Tensor& out, at::Tensor& mean, at::Tensor& rstd) {
  const int64_t N = ids.numel();
  const int64_t H = word.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, word.scalar_type(), "embeddings", [&] {
    using A = acc_t<scalar_t>;
    const EmbeddingTables<scalar_t, index_t> tables(ids, pos, types, word, position, token_type);
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    const scalar_t* bp = beta.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    A* meanp = mean.mutable_data_ptr<A>();
    A* rstdp = rstd.mutable_data_ptr<A>();
    at::parallel_for(0, N, std::max<int64_t>(1, 16384 / H), [&](int64_t begin, int64_t end) {
      auto fill = [&](int64_t t) { return tables.reader(tables.rows(t, "embeddings")); };
      layernorm_rows<scalar_t>(begin, end, H, fill, wp, bp, eps, op, meanp, rstdp);
    });
  });
}

void embeddings_kernel(const at::Tensor& ids, const at::Tensor& pos, const at::Tensor* types, const at::Tensor& word,
                       const at::Tensor& position, const at::Tensor* token_type, const at::Tensor& weight,
                       const at::Tensor& beta, double eps, at::Tensor& out, at::Tensor& mean, at::Tensor& rstd) {
  if (ids.scalar_type() == at::kLong) {
    embeddings_typed<int64_t>(ids, pos, types, word, position, token_type, weight, beta, eps, out, mean, rstd);
  } else {
    embeddings_typed<int32_t>(ids, pos, types, word, position, token_type, weight, beta, eps, out, mean, rstd);
  }
}

}  // namespace CPU_CAPABILITY

#ifdef CPU_CAPABILITY_DEFAULT
FASTBERT_CPU_DECLARE(void embeddings_kernel(const at::Tensor&, const at::Tensor&, const at::Tensor*, const at::Tensor&,
                                            const at::Tensor&, const at::Tensor*, const at::Tensor&, const at::Tensor&,
                                            double, at::Tensor&, at::Tensor&, at::Tensor&))

std::tuple<at::Tensor, at::Tensor, at::Tensor> embeddings_cpu(
    const at::Tensor& input_ids, const at::Tensor& position_ids, const std::optional<at::Tensor>& token_type_ids,
    const at::Tensor& word_weight, const at::Tensor& position_weight,
    const std::optional<at::Tensor>& token_type_weight, const at::Tensor& ln_weight, const at::Tensor& ln_bias,
    double eps) {
  const int64_t H = check_embeddings_inputs("embeddings", input_ids, position_ids, token_type_ids, word_weight,
                                            position_weight, token_type_weight, ln_weight, &ln_bias);
  TORCH_CHECK_VALUE(eps >= 0, "embeddings: eps must be >= 0, got ", eps);
  auto shape = input_ids.sizes().vec();
  auto stat_dtype = word_weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto mean = at::empty(shape, word_weight.options().dtype(stat_dtype));
  auto rstd = at::empty(shape, word_weight.options().dtype(stat_dtype));
  shape.push_back(H);
  auto out = at::empty(shape, word_weight.options());
  if (input_ids.numel() > 0) {
    at::Tensor types = token_type_ids ? token_type_ids->contiguous() : at::Tensor();
    at::Tensor tt = token_type_weight ? token_type_weight->contiguous() : at::Tensor();
    FASTBERT_CPU_DISPATCH(embeddings_kernel, input_ids.contiguous(), position_ids.contiguous(),
                          token_type_ids ? &types : nullptr, word_weight.contiguous(), position_weight.contiguous(),
                          token_type_weight ? &tt : nullptr, ln_weight.contiguous(), ln_bias.contiguous(), eps, out,
                          mean, rstd);
  }
  return {out, mean, rstd};
}

TORCH_LIBRARY_IMPL(fastbert, CPU, m) { m.impl("embeddings", &embeddings_cpu); }
#endif

}  // namespace fastbert::cpu
