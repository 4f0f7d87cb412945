// Run-time choice of the CPU kernels' instruction set.
//
// Every csrc/cpu/<op>.cpp is compiled three times (setup.py), with CPU_CAPABILITY = AVX512, AVX2 or DEFAULT
// (plain C++), so its kernels exist in three namespaces. The DEFAULT compile also holds the op's argument
// checks and its TORCH_LIBRARY_IMPL registration, which calls FASTBERT_CPU_DISPATCH to reach the kernel
// of the instruction set chosen here: the best the processor has, or FASTBERT_CPU_ISA=avx512|avx2|scalar.
#pragma once
#include <string>
#include <vector>

namespace fastbert::cpu {

enum class Isa { Scalar = 0, AVX2 = 1, AVX512 = 2 };

Isa active_isa();
void set_active_isa(Isa isa);  // throws if the processor lacks it
Isa parse_isa(const std::string& name);  // "avx512" | "avx2" | "scalar"; throws otherwise
const char* isa_name(Isa isa);
std::vector<Isa> supported_isas();

// The bfloat16 dot-product path of the AVX-512 attention kernel (VDPBF16PS, AVX512-BF16): supported when the
// processor has avx512_bf16; on by default where supported, set_bf16_dot(false) (or FASTBERT_CPU_BF16_DOT=0 at
// import, fastbert.ops) keeps the fp32-staged path. bf16_dot_enabled() = supported and on.
bool bf16_dot_supported();
bool bf16_dot_enabled();
void set_bf16_dot(bool on);  // throws when turning it on on a processor without avx512_bf16

}  // namespace fastbert::cpu

// Declares a kernel in each instruction set's namespace: FASTBERT_CPU_DECLARE(void f(int));
#define FASTBERT_CPU_DECLARE(...) \
  namespace AVX512 {              \
  __VA_ARGS__;                    \
  }                               \
  namespace AVX2 {                \
  __VA_ARGS__;                    \
  }                               \
  namespace DEFAULT {             \
  __VA_ARGS__;                    \
  }

// Calls the chosen instruction set's version of a kernel declared with FASTBERT_CPU_DECLARE.
#define FASTBERT_CPU_DISPATCH(fn, ...)                                   \
  do {                                                                   \
    switch (::fastbert::cpu::active_isa()) {                             \
      case ::fastbert::cpu::Isa::AVX512: AVX512::fn(__VA_ARGS__); break; \
      case ::fastbert::cpu::Isa::AVX2: AVX2::fn(__VA_ARGS__); break;     \
      default: DEFAULT::fn(__VA_ARGS__); break;                          \
    }                                                                    \
  } while (0)
