// Host side of the LayerNorm launches (csrc/cuda/embeddings*.cu, bias_residual_layernorm*.cu): the hidden sizes
// the kernels take. The forward keeps rows of H floats in the default 48 KiB of shared memory (layernorm.cuh);
// the backward takes more than 48 KiB (opt-in) only for hidden sizes that need it (layernorm_backward.cuh).
#pragma once
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include "cuda/layernorm_backward.cuh"

namespace fastbert::cuda {

inline void check_layernorm_hidden(int64_t H, const char* op) {
  TORCH_CHECK(layernorm_rows_per_block(H) > 0, op, ": hidden size ", H, " is larger than the CUDA kernel's limit ",
              kSmemDefault / int64_t(sizeof(float)));
}

// The shared memory a backward row kernel may take for rows of H: the default 48 KiB, or the device's opt-in
// limit when H needs more. Call under the device's CUDAGuard.
inline int64_t ln_backward_smem_limit(int64_t H, const char* op) {
  if (ln_backward_warps(H, kSmemDefault) > 0) return kSmemDefault;
  int dev = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  TORCH_CHECK(ln_backward_warps(H, optin) > 0, op, ": hidden size ", H,
              " is larger than the CUDA kernel's limit on this device, ", optin / (3 * int64_t(sizeof(float))));
  return optin;
}

}  // namespace fastbert::cuda
