// Host side of the LayerNorm backward launches (csrc/cuda/*_backward.cu): the block shape and shared memory of
// the row kernels (csrc/cuda/layernorm_backward.cuh), with more than 48 KiB of shared memory taken (opt-in)
// only for hidden sizes that need it.
#pragma once
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include "cuda/layernorm_backward.cuh"

namespace fastbert::cuda {

struct LnBackwardConfig {
  int warps;     // rows in flight per block
  int64_t smem;  // dynamic shared memory bytes per block
};

// Call under the device's CUDAGuard.
inline LnBackwardConfig ln_backward_config(int64_t H, const char* op) {
  int warps = ln_backward_warps(H, kSmemDefault);
  if (warps == 0) {
    int dev = 0, optin = 0;
    C10_CUDA_CHECK(cudaGetDevice(&dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    warps = ln_backward_warps(H, optin);
    TORCH_CHECK(warps > 0, op, ": hidden size ", H, " is larger than the CUDA kernel's limit on this device, ",
                optin / (3 * int64_t(sizeof(float))));
  }
  return {warps, ln_backward_smem(H, warps)};
}

// Lets `kernel` launch with `smem` bytes of dynamic shared memory (a no-op up to the default 48 KiB).
template <typename Kernel>
void allow_smem(Kernel kernel, int64_t smem) {
  if (smem > kSmemDefault)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
}

}  // namespace fastbert::cuda
