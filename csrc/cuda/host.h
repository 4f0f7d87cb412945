// Host-side helpers of the CUDA launchers (csrc/cuda/*.cu only; the kernels and their launch configurations live
// in *.cuh).
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/common.cuh"

namespace fastbert::cuda {

inline void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got ", t.device());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but the other inputs on ",
              ref.device());
}

// The storage dtypes the CUDA kernels take (fp32 accumulation for all three).
inline void check_float_dtype(const at::Tensor& t, const char* op, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kHalf || s == at::kBFloat16, op, ": ", name,
              " must be float32, float16 or bfloat16 on CUDA, got ", s);
}

// Runs a Launch worked out by a kernel's .cuh (common.cuh) on `stream`, and checks it. More than the default
// 48 KiB of dynamic shared memory is opted into first (the caller has checked that the device allows it).
template <typename Kernel, typename... Args>
void launch(const Launch<Kernel>& l, cudaStream_t stream, const Args&... args) {
  if (l.smem > static_cast<size_t>(kSmemDefault))
    C10_CUDA_CHECK(
        cudaFuncSetAttribute(l.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(l.smem)));
  const Kernel kernel = l.kernel;
  kernel<<<l.grid, l.block, l.smem, stream>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// AT_DISPATCH over the three storage dtypes, binding scalar_t to float / c10::Half / c10::BFloat16.
#define FASTBERT_DISPATCH_FLOAT(TYPE, NAME, ...)                                                        \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                                                        \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) \
                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

}  // namespace fastbert::cuda
