// The activations of bias_act, shared by the CPU and CUDA kernels. Names follow transformers' ACT2FN.
#pragma once
#include <string>

namespace fastbert {

enum class Activation { Gelu, GeluTanh, GeluFast, QuickGelu, Relu, Silu };

// Returns false for a name the kernels do not fuse (the Python side then takes the reference path).
inline bool parse_activation(const std::string& name, Activation* out) {
  if (name == "gelu") *out = Activation::Gelu;
  else if (name == "gelu_new" || name == "gelu_pytorch_tanh") *out = Activation::GeluTanh;
  else if (name == "gelu_fast") *out = Activation::GeluFast;
  else if (name == "quick_gelu") *out = Activation::QuickGelu;
  else if (name == "relu") *out = Activation::Relu;
  else if (name == "silu" || name == "swish") *out = Activation::Silu;
  else return false;
  return true;
}

// Runs f.template operator()<A>() for the Activation A that act names: a kernel instantiated per activation,
// chosen at run time (f: a lambda template, []<Activation A>() { ... }).
template <typename F>
inline void with_activation(Activation act, F&& f) {
  switch (act) {
    case Activation::Gelu: return f.template operator()<Activation::Gelu>();
    case Activation::GeluTanh: return f.template operator()<Activation::GeluTanh>();
    case Activation::GeluFast: return f.template operator()<Activation::GeluFast>();
    case Activation::QuickGelu: return f.template operator()<Activation::QuickGelu>();
    case Activation::Relu: return f.template operator()<Activation::Relu>();
    case Activation::Silu: return f.template operator()<Activation::Silu>();
  }
}

constexpr const char* kActivationNames = "gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, quick_gelu, relu, silu, swish";

}  // namespace fastbert
