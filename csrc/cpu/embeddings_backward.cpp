// embeddings_backward: the gradients of out = LayerNorm(word[ids] + position[pos] + token_type[type]).
//
// Two passes. (1) Parallel over fixed chunks of tokens: re-gather each token's three rows into an fp32
// scratch row (the sum is never saved), run the LayerNorm backward on it with the forward's (mean, rstd)
// (csrc/cpu/layernorm_backward.h) and keep grad_s (N, H) in the accumulation type; the LayerNorm parameters'
// gradients are reduced by chunk, deterministically. (2) The tables' gradients, dense like nn.Embedding's:
// grad_table[id[t]] += grad_s[t] for the three tables, parallel over blocks of columns so that each thread
// owns its columns of every table row and walks the tokens in order: no atomics, the same bits for any
// thread count. 16-bit tables are accumulated in fp32 and rounded once. No padding_idx here: nn.Embedding's
// zero gradient at the pad id is the model's to apply (the ops layer's autograd: zero_row_grad).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "cpu/embeddings.h"
#include "cpu/isa.h"
#include "cpu/layernorm_backward.h"

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

// tables[k] (rows_k, H) acc type += grad_s (N, H) rows at row_ids[k] (N,), k < n_tables.
template <typename A>
void scatter_add_rows(const A* grad_s, int64_t N, int64_t H, const std::vector<const int64_t*>& row_ids,
                      const std::vector<A*>& tables) {
  constexpr int64_t kCols = 64;
  const int64_t blocks = (H + kCols - 1) / kCols;
  using V = at::vec::Vectorized<A>;
  constexpr int64_t W = V::size();
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t c0 = blk * kCols, c1 = std::min(H, c0 + kCols);
      for (size_t k = 0; k < tables.size(); ++k) {
        A* table = tables[k];
        const int64_t* rows = row_ids[k];
        for (int64_t t = 0; t < N; ++t) {
          const A* src = grad_s + t * H;
          A* dst = table + rows[t] * H;
          for (int64_t c = c0; c < c1; c += W) {
            const int64_t n = std::min(W, c1 - c);
            (V::loadu(dst + c, n) + V::loadu(src + c, n)).store(dst + c, n);
          }
        }
      }
    }
  });
}

template <typename index_t>
void embeddings_backward_typed(const at::Tensor& grad_out, const at::Tensor& ids, const at::Tensor& pos,
                               const at::Tensor* types, const at::Tensor& word, const at::Tensor& position,
                               const at::Tensor* token_type, const at::Tensor& weight, const at::Tensor& mean,
                               const at::Tensor& rstd, at::Tensor& g_word, at::Tensor& g_pos, at::Tensor* g_tt,
                               at::Tensor& g_w, at::Tensor& g_b) {
  const int64_t N = ids.numel();
  const int64_t H = word.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, word.scalar_type(), "embeddings_backward", [&] {
    using A = acc_t<scalar_t>;
    const EmbeddingTables<scalar_t, index_t> in(ids, pos, types, word, position, token_type);

    // (1) LayerNorm backward on the re-gathered sums; checked row ids kept for the scatter.
    std::vector<A> grad_s(static_cast<size_t>(N * H));
    std::vector<int64_t> rows(static_cast<size_t>(3 * N));
    auto fill = [&](int64_t t) {
      const auto r = in.rows(t, "embeddings_backward");
      for (int k = 0; k < 3; ++k) rows[k * N + t] = r[k];
      return in.reader(r);
    };
    layernorm_backward_rows<scalar_t>(
        N, H, fill, grad_out.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), mean.const_data_ptr<A>(),
        rstd.const_data_ptr<A>(), grad_s.data(), g_w.mutable_data_ptr<scalar_t>(), g_b.mutable_data_ptr<scalar_t>());

    // (2) Deterministic scatter-add into the (acc type) tables.
    std::vector<const int64_t*> row_ids{rows.data(), rows.data() + N};
    std::vector<A*> tables{g_word.mutable_data_ptr<A>(), g_pos.mutable_data_ptr<A>()};
    if (g_tt) {
      row_ids.push_back(rows.data() + 2 * N);
      tables.push_back(g_tt->mutable_data_ptr<A>());
    }
    scatter_add_rows<A>(grad_s.data(), N, H, row_ids, tables);
  });
}

// g_word, g_pos, g_tt: zero-filled, in the accumulation type (fp32 for 16-bit tables).
void embeddings_backward_kernel(const at::Tensor& grad_out, const at::Tensor& ids, const at::Tensor& pos,
                                const at::Tensor* types, const at::Tensor& word, const at::Tensor& position,
                                const at::Tensor* token_type, const at::Tensor& weight, const at::Tensor& mean,
                                const at::Tensor& rstd, at::Tensor& g_word, at::Tensor& g_pos, at::Tensor* g_tt,
                                at::Tensor& g_w, at::Tensor& g_b) {
  if (ids.scalar_type() == at::kLong) {
    embeddings_backward_typed<int64_t>(grad_out, ids, pos, types, word, position, token_type, weight, mean, rstd,
                                       g_word, g_pos, g_tt, g_w, g_b);
  } else {
    embeddings_backward_typed<int32_t>(grad_out, ids, pos, types, word, position, token_type, weight, mean, rstd,
                                       g_word, g_pos, g_tt, g_w, g_b);
  }
}

}  // namespace CPU_CAPABILITY

#ifdef CPU_CAPABILITY_DEFAULT
FASTBERT_CPU_DECLARE(void embeddings_backward_kernel(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                     const at::Tensor*, const at::Tensor&, const at::Tensor&,
                                                     const at::Tensor*, const at::Tensor&, const at::Tensor&,
                                                     const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor*,
                                                     at::Tensor&, at::Tensor&))

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> embeddings_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& input_ids, const at::Tensor& position_ids,
    const std::optional<at::Tensor>& token_type_ids, const at::Tensor& word_weight, const at::Tensor& position_weight,
    const std::optional<at::Tensor>& token_type_weight, const at::Tensor& ln_weight, const at::Tensor& mean,
    const at::Tensor& rstd) {
  const int64_t H = check_embeddings_inputs("embeddings_backward", input_ids, position_ids, token_type_ids, word_weight,
                                            position_weight, token_type_weight, ln_weight, nullptr);
  auto out_shape = input_ids.sizes().vec();
  out_shape.push_back(H);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(out_shape), "embeddings_backward: grad_out must have shape ",
              at::IntArrayRef(out_shape), " (input_ids' shape + (H,)), got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == word_weight.scalar_type() && grad_out.device().is_cpu(),
              "embeddings_backward: grad_out must be a CPU tensor of word_weight's dtype ", word_weight.scalar_type(),
              ", got ", grad_out.scalar_type());
  const auto stat_dtype = word_weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  for (auto [t, name] : {std::pair{&mean, "mean"}, std::pair{&rstd, "rstd"}}) {
    TORCH_CHECK(t->sizes() == input_ids.sizes(), "embeddings_backward: ", name, " must have input_ids' shape ",
                input_ids.sizes(), ", got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == stat_dtype && t->device().is_cpu(), "embeddings_backward: ", name,
                " must be a CPU tensor of dtype ", stat_dtype, " (the forward's statistics), got ", t->scalar_type());
  }
  const auto acc = word_weight.options().dtype(stat_dtype);
  auto g_word = at::zeros(word_weight.sizes(), acc);
  auto g_pos = at::zeros(position_weight.sizes(), acc);
  auto g_tt = token_type_weight ? at::zeros(token_type_weight->sizes(), acc) : at::zeros({0, H}, acc);
  auto g_w = at::zeros({H}, ln_weight.options());
  auto g_b = at::zeros({H}, ln_weight.options());
  if (input_ids.numel() > 0) {
    at::Tensor types = token_type_ids ? token_type_ids->contiguous() : at::Tensor();
    at::Tensor tt = token_type_weight ? token_type_weight->contiguous() : at::Tensor();
    FASTBERT_CPU_DISPATCH(embeddings_backward_kernel, grad_out.contiguous(), input_ids.contiguous(),
                          position_ids.contiguous(), token_type_ids ? &types : nullptr, word_weight.contiguous(),
                          position_weight.contiguous(), token_type_weight ? &tt : nullptr, ln_weight.contiguous(),
                          mean.contiguous(), rstd.contiguous(), g_word, g_pos, token_type_weight ? &g_tt : nullptr, g_w,
                          g_b);
  }
  const auto dtype = word_weight.scalar_type();
  return {g_word.to(dtype), g_pos.to(dtype), g_tt.to(dtype), g_w, g_b};
}

TORCH_LIBRARY_IMPL(fastbert, CPU, m) { m.impl("embeddings_backward", &embeddings_backward_cpu); }
#endif

}  // namespace fastbert::cpu
