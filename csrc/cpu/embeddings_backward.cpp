// embeddings_backward: the gradients of out = LayerNorm(word[ids] + position[pos] + token_type[type]).
//
// Two passes. (1) Parallel over fixed chunks of tokens: re-gather each token's three rows into an fp32
// scratch row (the sum is never saved), run the LayerNorm backward on it with the forward's (mean, rstd)
// (csrc/cpu/layernorm_backward.h) and keep grad_s (N, H) in the accumulation type; the LayerNorm parameters'
// gradients are reduced by chunk, deterministically. (2) The tables' gradients, dense like nn.Embedding's:
// grad_table[id[t]] += grad_s[t] for the three tables, parallel over blocks of columns so that each thread
// owns its columns of every table row and walks the tokens in order: no atomics, the same bits for any
// thread count. 16-bit tables are accumulated in fp32 and rounded once. No padding_idx here: nn.Embedding's
// zero gradient at the pad id is the model's to apply (fastbert/autograd.py: zero_row_grad).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "cpu/isa.h"
#include "cpu/layernorm_backward.h"

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

template <typename index_t>
inline int64_t checked_id_bwd(const index_t* ids, int64_t i, int64_t limit, const char* name) {
  const int64_t id = static_cast<int64_t>(ids[i]);
  TORCH_CHECK_INDEX(id >= 0 && id < limit, "embeddings_backward: ", name, "[", i, "] = ", id,
                    " is out of range [0, ", limit, ")");
  return id;
}

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
    constexpr int64_t W = vec_width<scalar_t>();
    const scalar_t* gp = grad_out.const_data_ptr<scalar_t>();
    const index_t* idp = ids.const_data_ptr<index_t>();
    const index_t* posp = pos.const_data_ptr<index_t>();
    const index_t* typep = types ? types->const_data_ptr<index_t>() : nullptr;
    const scalar_t* wordp = word.const_data_ptr<scalar_t>();
    const scalar_t* positionp = position.const_data_ptr<scalar_t>();
    const scalar_t* ttp = token_type ? token_type->const_data_ptr<scalar_t>() : nullptr;
    const int64_t Vw = word.size(0), P = position.size(0), TV = token_type ? token_type->size(0) : 0;
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    const A* meanp = mean.const_data_ptr<A>();
    const A* rstdp = rstd.const_data_ptr<A>();

    // (1) LayerNorm backward on the re-gathered sums; checked row ids kept for the scatter.
    std::vector<A> grad_s(static_cast<size_t>(N * H));
    std::vector<int64_t> rows(static_cast<size_t>(3 * N));
    const int64_t R = ln_backward_chunk_rows(N);
    const int64_t chunks = (N + R - 1) / R;
    std::vector<A> partials(static_cast<size_t>(chunks * 2 * H), A(0));
    at::parallel_for(0, chunks, 1, [&](int64_t k0, int64_t k1) {
      std::vector<A> row(H);
      for (int64_t k = k0; k < k1; ++k) {
        A* part = partials.data() + k * 2 * H;
        for (int64_t t = k * R; t < std::min(N, (k + 1) * R); ++t) {
          const int64_t wid = checked_id_bwd(idp, t, Vw, "input_ids");
          const int64_t pid = checked_id_bwd(posp, t, P, "position_ids");
          const int64_t tid = ttp && typep ? checked_id_bwd(typep, t, TV, "token_type_ids") : 0;
          rows[t] = wid;
          rows[N + t] = pid;
          rows[2 * N + t] = tid;
          const scalar_t* wr = wordp + wid * H;
          const scalar_t* pr = positionp + pid * H;
          const scalar_t* tr = ttp ? ttp + tid * H : nullptr;
          for (int64_t c = 0; c < H; c += W) {
            const int64_t n = std::min(W, H - c);
            auto v = load_acc(wr + c, n) + load_acc(pr + c, n);
            if (tr) v = v + load_acc(tr + c, n);
            v.store(row.data() + c, n);
          }
          layernorm_backward_row<scalar_t>(row.data(), gp + t * H, wp, meanp[t], rstdp[t], H,
                                           grad_s.data() + t * H, part, part + H);
        }
      }
    });
    reduce_ln_partials<scalar_t>(partials.data(), chunks, H, g_w.mutable_data_ptr<scalar_t>(),
                                 g_b.mutable_data_ptr<scalar_t>());

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

static void check_table_bwd(const at::Tensor& t, const char* name, int64_t H, const at::Tensor& word) {
  TORCH_CHECK(t.dim() == 2 && t.size(1) == H, "embeddings_backward: ", name, " must have shape (N, ", H, "), got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == word.scalar_type() && t.device().is_cpu(), "embeddings_backward: ", name,
              " must be a CPU tensor of word_weight's dtype ", word.scalar_type(), ", got ", t.scalar_type());
}

static void check_ids_bwd(const at::Tensor& t, const char* name, const at::Tensor& ids) {
  TORCH_CHECK(t.scalar_type() == ids.scalar_type(), "embeddings_backward: ", name, " must have input_ids' dtype ",
              ids.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == ids.sizes(), "embeddings_backward: ", name, " must have input_ids' shape ", ids.sizes(),
              ", got ", t.sizes());
  TORCH_CHECK(t.device().is_cpu(), "embeddings_backward: ", name, " must be a CPU tensor");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> embeddings_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& input_ids, const at::Tensor& position_ids,
    const std::optional<at::Tensor>& token_type_ids, const at::Tensor& word_weight, const at::Tensor& position_weight,
    const std::optional<at::Tensor>& token_type_weight, const at::Tensor& ln_weight, const at::Tensor& mean,
    const at::Tensor& rstd) {
  TORCH_CHECK(input_ids.scalar_type() == at::kLong || input_ids.scalar_type() == at::kInt,
              "embeddings_backward: input_ids must be int64 or int32, got ", input_ids.scalar_type());
  TORCH_CHECK(input_ids.device().is_cpu(), "embeddings_backward: input_ids must be a CPU tensor");
  TORCH_CHECK(word_weight.dim() == 2 && word_weight.size(1) > 0,
              "embeddings_backward: word_weight must have shape (vocab, H), got ", word_weight.sizes());
  TORCH_CHECK(at::isFloatingType(word_weight.scalar_type()) && word_weight.device().is_cpu(),
              "embeddings_backward: word_weight must be a floating-point CPU tensor");
  const int64_t H = word_weight.size(1);
  check_ids_bwd(position_ids, "position_ids", input_ids);
  if (token_type_ids) check_ids_bwd(*token_type_ids, "token_type_ids", input_ids);
  TORCH_CHECK(!token_type_ids || token_type_weight,
              "embeddings_backward: token_type_ids given without token_type_weight");
  check_table_bwd(position_weight, "position_weight", H, word_weight);
  if (token_type_weight) check_table_bwd(*token_type_weight, "token_type_weight", H, word_weight);
  TORCH_CHECK(ln_weight.dim() == 1 && ln_weight.size(0) == H, "embeddings_backward: ln_weight must have shape (", H,
              ",), got ", ln_weight.sizes());
  TORCH_CHECK(ln_weight.scalar_type() == word_weight.scalar_type() && ln_weight.device().is_cpu(),
              "embeddings_backward: ln_weight must be a CPU tensor of word_weight's dtype");
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
                          mean.contiguous(), rstd.contiguous(), g_word, g_pos, token_type_weight ? &g_tt : nullptr,
                          g_w, g_b);
  }
  const auto dtype = word_weight.scalar_type();
  return {g_word.to(dtype), g_pos.to(dtype), g_tt.to(dtype), g_w, g_b};
}

TORCH_LIBRARY_IMPL(fastbert, CPU, m) { m.impl("embeddings_backward", &embeddings_backward_cpu); }
#endif

}  // namespace fastbert::cpu
