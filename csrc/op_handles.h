// The C++ signatures of the fastbert ops' schemas (csrc/fastbert.cpp), and typed handles to call them through the
// dispatcher: csrc/autograd.cpp calls the kernels below autograd with them, csrc/inference.cpp the layer loop.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>

namespace fastbert {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensor2 = std::tuple<Tensor, Tensor>;

// An op by name and C++ signature (the signature is checked against the schema when the handle is made).
template <typename Sig>
c10::TypedOperatorHandle<Sig> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

using BiasActSig = Tensor(const Tensor&, const Tensor&, c10::string_view);
using BiasActBackwardSig = Tensor(const Tensor&, const Tensor&, const Tensor&, c10::string_view);
using BrlnSig = Tensor3(const Tensor&, const OptTensor&, const Tensor&, const Tensor&, const Tensor&, double);
using BrlnBackwardSig = Tensor3(const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
                                const Tensor&, const Tensor&);
using EmbSig = Tensor3(const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const Tensor&, const OptTensor&,
                       const Tensor&, const Tensor&, double);
using EmbBackwardSig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                                          const OptTensor&, const Tensor&,
                                                                          const Tensor&, const OptTensor&,
                                                                          const Tensor&, const Tensor&, const Tensor&);
using AttnSig = Tensor2(const Tensor&, const OptTensor&, const Tensor&, int64_t, int64_t, double, double, int64_t,
                        int64_t);
using AttnBackwardSig = Tensor(const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
                               const Tensor&, int64_t, int64_t, double, double, int64_t, int64_t);
using MaskedSig = Tensor2(const Tensor&, const OptTensor&, const Tensor&, int64_t, double, double, int64_t, int64_t);
using MaskedBackwardSig = Tensor(const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
                                 const Tensor&, int64_t, double, double, int64_t, int64_t);

}  // namespace fastbert
