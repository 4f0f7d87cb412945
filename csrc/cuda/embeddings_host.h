// Host side of embeddings and embeddings_backward on CUDA (their .cu launchers): the checks of the ids, the
// tables and the LayerNorm weight that both ops take, and the kernels' inputs from them.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

#include "cuda/embeddings.cuh"
#include "cuda/host.h"

namespace fastbert::cuda {

// input_ids int64 or int32; position_ids and token_type_ids (given with token_type_weight only) of its dtype and
// shape; the tables (rows, H), ln_weight and ln_bias (forward only) (H,) of word_weight's float dtype; all on
// word_weight's device. Returns H.
inline int64_t check_embeddings_inputs(const at::Tensor& input_ids, const at::Tensor& position_ids,
                                       const std::optional<at::Tensor>& token_type_ids, const at::Tensor& word_weight,
                                       const at::Tensor& position_weight,
                                       const std::optional<at::Tensor>& token_type_weight, const at::Tensor& ln_weight,
                                       const at::Tensor* ln_bias, const char* op) {
  TORCH_CHECK(input_ids.scalar_type() == at::kLong || input_ids.scalar_type() == at::kInt, op,
              ": input_ids must be int64 or int32, got ", input_ids.scalar_type());
  TORCH_CHECK(word_weight.dim() == 2 && word_weight.size(1) > 0, op,
              ": word_weight must have shape (vocab, H) with H > 0, got ", word_weight.sizes());
  check_cuda(word_weight, op, "word_weight");
  check_float_dtype(word_weight, op, "word_weight");
  check_same_device(input_ids, word_weight, op, "input_ids");
  const int64_t H = word_weight.size(1);
  auto check_ids = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == input_ids.scalar_type(), op, ": ", name, " must have input_ids' dtype ",
                input_ids.scalar_type(), ", got ", t.scalar_type());
    TORCH_CHECK(t.sizes() == input_ids.sizes(), op, ": ", name, " must have input_ids' shape ", input_ids.sizes(),
                ", got ", t.sizes());
    check_same_device(t, word_weight, op, name);
  };
  auto check_param = [&](const at::Tensor& t, const char* name, bool table) {
    TORCH_CHECK(table ? t.dim() == 2 && t.size(1) == H : t.dim() == 1 && t.size(0) == H, op, ": ", name,
                " must have shape ", table ? "(N, " : "(", H, table ? ")" : ",)", ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == word_weight.scalar_type(), op, ": ", name, " dtype ", t.scalar_type(),
                " must match word_weight dtype ", word_weight.scalar_type());
    check_same_device(t, word_weight, op, name);
  };
  check_ids(position_ids, "position_ids");
  TORCH_CHECK(!token_type_ids || token_type_weight, op, ": token_type_ids given without token_type_weight");
  if (token_type_ids) check_ids(*token_type_ids, "token_type_ids");
  check_param(position_weight, "position_weight", true);
  if (token_type_weight) check_param(*token_type_weight, "token_type_weight", true);
  check_param(ln_weight, "ln_weight", false);
  if (ln_bias) check_param(*ln_bias, "ln_bias", false);
  return H;
}

// The kernels' inputs (embeddings.cuh) from contiguous tensors; type_ids and type undefined when absent.
template <typename T, typename I>
EmbeddingsInputs<T, I> make_embeddings_inputs(const at::Tensor& ids, const at::Tensor& pos_ids,
                                              const at::Tensor& type_ids, const at::Tensor& word, const at::Tensor& pos,
                                              const at::Tensor& type, const at::Tensor& gamma) {
  return embeddings_inputs(
      EmbeddingsInputs<T, I>{.ids = ids.const_data_ptr<I>(),
                             .pos_ids = pos_ids.const_data_ptr<I>(),
                             .type_ids = type_ids.defined() ? type_ids.const_data_ptr<I>() : nullptr,
                             .word = word.const_data_ptr<T>(),
                             .pos = pos.const_data_ptr<T>(),
                             .type = type.defined() ? type.const_data_ptr<T>() : nullptr,
                             .gamma = gamma.const_data_ptr<T>(),
                             .N = ids.numel(),
                             .H = word.size(1),
                             .V = word.size(0),
                             .P = pos.size(0),
                             .TT = type.defined() ? type.size(0) : 0});
}

}  // namespace fastbert::cuda
