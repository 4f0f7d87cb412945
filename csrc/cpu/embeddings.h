// What embeddings and embeddings_backward share on the CPU: the kernels' view of the ids and tables with the range
// check of an id, and the ops' checks of the ids, the tables and the LayerNorm parameters (called from the
// default-ISA object only).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <array>
#include <cstdint>
#include <optional>
#include <utility>

#include "cpu/layernorm.h"

namespace fastbert::cpu {
namespace CPU_CAPABILITY {

// ids[i], or an IndexError naming the op and the argument when it is outside [0, limit).
template <typename index_t>
inline int64_t checked_id(const index_t* ids, int64_t i, int64_t limit, const char* op, const char* name) {
  const int64_t id = static_cast<int64_t>(ids[i]);
  TORCH_CHECK_INDEX(id >= 0 && id < limit, op, ": ", name, "[", i, "] = ", id, " is out of range [0, ", limit, ")");
  return id;
}

// A call's ids and tables as the kernels read them, from contiguous tensors (type_ids, type: nullptr when absent).
template <typename T, typename I>
struct EmbeddingTables {
  const I* ids;
  const I* pos_ids;
  const I* type_ids;
  const T* word;  // (V, H)
  const T* pos;   // (P, H)
  const T* type;  // (TT, H)
  int64_t H, V, P, TT;

  EmbeddingTables(const at::Tensor& ids, const at::Tensor& pos_ids, const at::Tensor* type_ids, const at::Tensor& word,
                  const at::Tensor& pos, const at::Tensor* type)
      : ids(ids.const_data_ptr<I>()),
        pos_ids(pos_ids.const_data_ptr<I>()),
        type_ids(type_ids ? type_ids->const_data_ptr<I>() : nullptr),
        word(word.const_data_ptr<T>()),
        pos(pos.const_data_ptr<T>()),
        type(type ? type->const_data_ptr<T>() : nullptr),
        H(word.size(1)),
        V(word.size(0)),
        P(pos.size(0)),
        TT(type ? type->size(0) : 0) {}

  // Token t's rows of the word, position and token type tables (type 0 without type ids), each checked.
  std::array<int64_t, 3> rows(int64_t t, const char* op) const {
    return {checked_id(ids, t, V, op, "input_ids"), checked_id(pos_ids, t, P, op, "position_ids"),
            type && type_ids ? checked_id(type_ids, t, TT, op, "token_type_ids") : 0};
  }

  // The reader of word[r[0]] + position[r[1]] (+ token_type[r[2]]) (layernorm.h's sum_row).
  auto reader(const std::array<int64_t, 3>& r) const {
    return sum_row(word + r[0] * H, pos + r[1] * H, type ? type + r[2] * H : nullptr);
  }
};

}  // namespace CPU_CAPABILITY

// input_ids int64 or int32; position_ids and token_type_ids (given with token_type_weight only) of its dtype and
// shape; word_weight (vocab, H) floating; the other tables (rows, H), ln_weight and ln_bias (forward only) (H,)
// of its dtype; all CPU tensors. Returns H.
inline int64_t check_embeddings_inputs(const char* op, const at::Tensor& input_ids, const at::Tensor& position_ids,
                                       const std::optional<at::Tensor>& token_type_ids, const at::Tensor& word_weight,
                                       const at::Tensor& position_weight,
                                       const std::optional<at::Tensor>& token_type_weight, const at::Tensor& ln_weight,
                                       const at::Tensor* ln_bias) {
  TORCH_CHECK(input_ids.scalar_type() == at::kLong || input_ids.scalar_type() == at::kInt, op,
              ": input_ids must be int64 or int32, got ", input_ids.scalar_type());
  TORCH_CHECK(input_ids.device().is_cpu(), op, ": input_ids must be a CPU tensor");
  TORCH_CHECK(word_weight.dim() == 2 && word_weight.size(1) > 0, op, ": word_weight must have shape (vocab, H), got ",
              word_weight.sizes());
  TORCH_CHECK(at::isFloatingType(word_weight.scalar_type()) && word_weight.device().is_cpu(), op,
              ": word_weight must be a floating-point CPU tensor");
  const int64_t H = word_weight.size(1);
  for (auto [t, name] : {std::pair{&position_ids, "position_ids"},
                         std::pair{token_type_ids ? &*token_type_ids : nullptr, "token_type_ids"}}) {
    if (t == nullptr) continue;
    TORCH_CHECK(t->scalar_type() == input_ids.scalar_type(), op, ": ", name, " must have input_ids' dtype ",
                input_ids.scalar_type(), ", got ", t->scalar_type());
    TORCH_CHECK(t->sizes() == input_ids.sizes(), op, ": ", name, " must have input_ids' shape ", input_ids.sizes(),
                ", got ", t->sizes());
    TORCH_CHECK(t->device().is_cpu(), op, ": ", name, " must be a CPU tensor");
  }
  TORCH_CHECK(!token_type_ids || token_type_weight, op, ": token_type_ids given without token_type_weight");
  for (auto [t, name, table] :
       {std::tuple{&position_weight, "position_weight", true},
        std::tuple{token_type_weight ? &*token_type_weight : nullptr, "token_type_weight", true},
        std::tuple{&ln_weight, "ln_weight", false}, std::tuple{ln_bias, "ln_bias", false}}) {
    if (t == nullptr) continue;
    TORCH_CHECK(table ? t->dim() == 2 && t->size(1) == H : t->dim() == 1 && t->size(0) == H, op, ": ", name,
                " must have shape ", table ? "(N, " : "(", H, table ? ")" : ",)", ", got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == word_weight.scalar_type() && t->device().is_cpu(), op, ": ", name,
                " must be a CPU tensor of word_weight's dtype ", word_weight.scalar_type(), ", got ", t->scalar_type());
  }
  return H;
}

}  // namespace fastbert::cpu
