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

#include "cpu/isa.h"
#include "cpu/layernorm.h"

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

template <typename index_t>
inline int64_t checked_id(const index_t* ids, int64_t i, int64_t limit, const char* name) {
  const int64_t id = static_cast<int64_t>(ids[i]);
  TORCH_CHECK_INDEX(id >= 0 && id < limit, "embeddings: ", name, "[", i, "] = ", id, " is out of range [0, ", limit,
                    ")");
  return id;
}

template <typename index_t>
void embeddings_typed(const at::Tensor& ids, const at::Tensor& pos, const at::Tensor* types, const at::Tensor& word,
                      const at::Tensor& position, const at::Tensor* token_type, const at::Tensor& weight,
                      const at::Tensor& beta, double eps, at::Tensor& out, at::Tensor& mean, at::Tensor& rstd) {
  const int64_t N = ids.numel();
  const int64_t H = word.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, word.scalar_type(), "embeddings", [&] {
    using A = acc_t<scalar_t>;
    const index_t* idp = ids.const_data_ptr<index_t>();
    const index_t* posp = pos.const_data_ptr<index_t>();
    const index_t* typep = types ? types->const_data_ptr<index_t>() : nullptr;
    const scalar_t* wordp = word.const_data_ptr<scalar_t>();
    const scalar_t* positionp = position.const_data_ptr<scalar_t>();
    const scalar_t* ttp = token_type ? token_type->const_data_ptr<scalar_t>() : nullptr;
    const int64_t V = word.size(0), P = position.size(0), TV = token_type ? token_type->size(0) : 0;
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    const scalar_t* bp = beta.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    A* meanp = mean.mutable_data_ptr<A>();
    A* rstdp = rstd.mutable_data_ptr<A>();
    at::parallel_for(0, N, std::max<int64_t>(1, 16384 / H), [&](int64_t begin, int64_t end) {
      auto fill = [=](int64_t t) {  // token t's reader: word[id] + position[pos] (+ token_type[type])
        const scalar_t* wr = wordp + checked_id(idp, t, V, "input_ids") * H;
        const scalar_t* pr = positionp + checked_id(posp, t, P, "position_ids") * H;
        const scalar_t* tr = nullptr;
        if (ttp) tr = ttp + (typep ? checked_id(typep, t, TV, "token_type_ids") : 0) * H;
        return [=](int64_t c, int64_t n) {
          auto v = load_acc(wr + c, n) + load_acc(pr + c, n);
          return tr ? v + load_acc(tr + c, n) : v;
        };
      };
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
FASTBERT_CPU_DECLARE(void embeddings_kernel(const at::Tensor&, const at::Tensor&, const at::Tensor*,
                                            const at::Tensor&, const at::Tensor&, const at::Tensor*,
                                            const at::Tensor&, const at::Tensor&, double, at::Tensor&, at::Tensor&,
                                            at::Tensor&))

static void check_table(const at::Tensor& t, const char* name, int64_t H, const at::Tensor& word) {
  TORCH_CHECK(t.dim() == 2 && t.size(1) == H, "embeddings: ", name, " must have shape (N, ", H, "), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == word.scalar_type() && t.device().is_cpu(), "embeddings: ", name,
              " must be a CPU tensor of word_weight's dtype ", word.scalar_type(), ", got ", t.scalar_type());
}

static void check_ids(const at::Tensor& t, const char* name, const at::Tensor& ids) {
  TORCH_CHECK(t.scalar_type() == ids.scalar_type(), "embeddings: ", name, " must have input_ids' dtype ",
              ids.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == ids.sizes(), "embeddings: ", name, " must have input_ids' shape ", ids.sizes(), ", got ",
              t.sizes());
  TORCH_CHECK(t.device().is_cpu(), "embeddings: ", name, " must be a CPU tensor");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> embeddings_cpu(
    const at::Tensor& input_ids, const at::Tensor& position_ids, const std::optional<at::Tensor>& token_type_ids,
    const at::Tensor& word_weight, const at::Tensor& position_weight,
    const std::optional<at::Tensor>& token_type_weight, const at::Tensor& ln_weight, const at::Tensor& ln_bias,
    double eps) {
  TORCH_CHECK(input_ids.scalar_type() == at::kLong || input_ids.scalar_type() == at::kInt,
              "embeddings: input_ids must be int64 or int32, got ", input_ids.scalar_type());
  TORCH_CHECK(input_ids.device().is_cpu(), "embeddings: input_ids must be a CPU tensor");
  TORCH_CHECK(word_weight.dim() == 2 && word_weight.size(1) > 0,
              "embeddings: word_weight must have shape (vocab, H), got ", word_weight.sizes());
  TORCH_CHECK(at::isFloatingType(word_weight.scalar_type()) && word_weight.device().is_cpu(),
              "embeddings: word_weight must be a floating-point CPU tensor");
  TORCH_CHECK_VALUE(eps >= 0, "embeddings: eps must be >= 0, got ", eps);
  const int64_t H = word_weight.size(1);
  check_ids(position_ids, "position_ids", input_ids);
  if (token_type_ids) check_ids(*token_type_ids, "token_type_ids", input_ids);
  TORCH_CHECK(!token_type_ids || token_type_weight, "embeddings: token_type_ids given without token_type_weight");
  check_table(position_weight, "position_weight", H, word_weight);
  if (token_type_weight) check_table(*token_type_weight, "token_type_weight", H, word_weight);
  for (auto [t, name] : {std::pair{&ln_weight, "ln_weight"}, std::pair{&ln_bias, "ln_bias"}}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == H, "embeddings: ", name, " must have shape (", H, ",), got ",
                t->sizes());
    TORCH_CHECK(t->scalar_type() == word_weight.scalar_type() && t->device().is_cpu(), "embeddings: ", name,
                " must be a CPU tensor of word_weight's dtype");
  }
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
