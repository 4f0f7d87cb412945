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

constexpr const char* kActivationNames = "gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, quick_gelu, relu, silu, swish";

}  // namespace fastbert
