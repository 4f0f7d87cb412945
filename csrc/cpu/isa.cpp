// The run-time instruction-set switch declared in isa.h (compiled per ISA; the code lives in DEFAULT only).
#include "cpu/isa.h"

#ifdef CPU_CAPABILITY_DEFAULT
#include <atomic>
#include <stdexcept>

namespace fastbert::cpu {
namespace {

bool processor_has(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  switch (isa) {
    case Isa::AVX512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma");
    case Isa::AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default: return true;
  }
#else
  return isa == Isa::Scalar;
#endif
}

// FASTBERT_CPU_ISA is validated (with a clear error) by fastbert.ops at import; here a bad value is ignored.
Isa initial_isa() {
  for (Isa isa : {Isa::AVX512, Isa::AVX2}) {
    if (processor_has(isa)) return isa;
  }
  return Isa::Scalar;
}

std::atomic<int>& current() {
  static std::atomic<int> isa{static_cast<int>(initial_isa())};
  return isa;
}

bool processor_has_bf16_dot() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return processor_has(Isa::AVX512) && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

std::atomic<bool>& bf16_dot_on() {
  static std::atomic<bool> on{processor_has_bf16_dot()};
  return on;
}

}  // namespace

bool bf16_dot_supported() {
  static const bool has = processor_has_bf16_dot();
  return has;
}

bool bf16_dot_enabled() { return bf16_dot_on().load(std::memory_order_relaxed); }

void set_bf16_dot(bool on) {
  if (on && !bf16_dot_supported()) {
    throw std::runtime_error("this processor has no avx512_bf16: the bf16 dot-product kernels cannot run");
  }
  bf16_dot_on().store(on);
}

Isa active_isa() { return static_cast<Isa>(current().load(std::memory_order_relaxed)); }

void set_active_isa(Isa isa) {
  if (!processor_has(isa)) {
    throw std::runtime_error(std::string("this processor cannot run the ") + isa_name(isa) + " kernels");
  }
  current().store(static_cast<int>(isa));
}

Isa parse_isa(const std::string& name) {
  if (name == "avx512") return Isa::AVX512;
  if (name == "avx2") return Isa::AVX2;
  if (name == "scalar") return Isa::Scalar;
  throw std::invalid_argument("unknown CPU instruction set '" + name + "': expected avx512, avx2 or scalar");
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::AVX512: return "avx512";
    case Isa::AVX2: return "avx2";
    default: return "scalar";
  }
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::AVX512, Isa::AVX2, Isa::Scalar}) {
    if (processor_has(isa)) out.push_back(isa);
  }
  return out;
}

}  // namespace fastbert::cpu
#endif  // CPU_CAPABILITY_DEFAULT
