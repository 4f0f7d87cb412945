// Kernels with planted faults, to check that the harness catches each kind every time (tests/ops/test_cuda_harness.py).
//
// Every kernel computes out[b] = sum of x[b*64 .. b*64+64) with blocks of 64 threads; fault_control_kernel
// does it correctly (the check that a fault-free kernel passes), each other one plants one bug.
#pragma once
#include "cuda/common.cuh"

namespace fastbert::cuda {

constexpr int kFaultThreads = 64;

FB_DEVICE void fault_finish(const float* buf, float* out) {
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (int k = 0; k < kFaultThreads; ++k) s += buf[k];
    out[blockIdx.x] = s;
  }
}

__global__ void fault_control_kernel(const float* x, float* out) {
  FB_SHARED(float, buf, kFaultThreads);
  buf[threadIdx.x] = x[blockIdx.x * kFaultThreads + threadIdx.x];
  __syncthreads();
  fault_finish(buf, out);
}

// Planted: no __syncthreads between the writes to shared memory and thread 0's reads of them.
__global__ void fault_missing_sync_kernel(const float* x, float* out) {
  FB_SHARED(float, buf, kFaultThreads);
  buf[threadIdx.x] = x[blockIdx.x * kFaultThreads + threadIdx.x];
  fault_finish(buf, out);
}

// Planted: a shared slot is overwritten while a neighbour may still have to read its old value (the
// __syncthreads between the read and the second write is missing).
__global__ void fault_missing_sync_war_kernel(const float* x, float* out) {
  FB_SHARED(float, buf, kFaultThreads);
  FB_SHARED(float, got, kFaultThreads);
  const int t = threadIdx.x;
  buf[t] = x[blockIdx.x * kFaultThreads + t];
  __syncthreads();
  const float neighbour = buf[(t + 1) % kFaultThreads];
  buf[t] = 2.f * neighbour;  // missing __syncthreads() before this write
  __syncthreads();
  got[t] = 0.5f * buf[t];
  __syncthreads();
  fault_finish(got, out);
}

// Planted: the last thread of the last block writes one element past the end of out.
__global__ void fault_global_oob_write_kernel(const float* x, float* out) {
  FB_SHARED(float, buf, kFaultThreads);
  buf[threadIdx.x] = x[blockIdx.x * kFaultThreads + threadIdx.x];
  __syncthreads();
  fault_finish(buf, out);
  if (blockIdx.x == gridDim.x - 1 && threadIdx.x == kFaultThreads - 1) out[gridDim.x] = 0.f;
}

// Planted: the last thread of the last block reads one element past the end of x.
__global__ void fault_global_oob_read_kernel(const float* x, float* out) {
  FB_SHARED(float, buf, kFaultThreads);
  const bool last = blockIdx.x == gridDim.x - 1 && threadIdx.x == kFaultThreads - 1;
  buf[threadIdx.x] = x[blockIdx.x * kFaultThreads + threadIdx.x + (last ? 1 : 0)];
  __syncthreads();
  fault_finish(buf, out);
}

// Planted: thread 0 sums one element past the end of a static shared array.
__global__ void fault_shared_oob_kernel(const float* x, float* out) {
  FB_SHARED(float, buf, kFaultThreads);
  buf[threadIdx.x] = x[blockIdx.x * kFaultThreads + threadIdx.x];
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (int k = 0; k <= kFaultThreads; ++k) s += buf[k];  // <= : one past the end
    out[blockIdx.x] = s;
  }
}

// Planted: the same off-by-one on dynamic shared memory (launched with 64 floats).
__global__ void fault_dynamic_smem_oob_kernel(const float* x, float* out) {
  float* buf = dynamic_smem<float>();
  buf[threadIdx.x] = x[blockIdx.x * kFaultThreads + threadIdx.x];
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (int k = 0; k <= kFaultThreads; ++k) s += buf[k];
    out[blockIdx.x] = s;
  }
}

// Planted: the last thread's shared slot is never written, yet thread 0 reads it.
__global__ void fault_uninit_shared_kernel(const float* x, float* out) {
  FB_SHARED(float, buf, kFaultThreads);
  const int t = threadIdx.x;
  if (t < kFaultThreads - 1) buf[t] = x[blockIdx.x * kFaultThreads + t];
  __syncthreads();
  if (t == 0) {
    float s = x[blockIdx.x * kFaultThreads + kFaultThreads - 1];
    for (int k = 0; k < kFaultThreads; ++k) s += k == kFaultThreads - 1 ? buf[k] * 0.f + 0.f * s : buf[k];
    out[blockIdx.x] = s;
  }
}

// Planted: a __syncthreads inside a branch only the first warp takes (the rest of the block exits).
__global__ void fault_divergent_barrier_kernel(const float* x, float* out) {
  FB_SHARED(float, buf, kFaultThreads);
  buf[threadIdx.x] = x[blockIdx.x * kFaultThreads + threadIdx.x];
  if (threadIdx.x < kWarp) {
    __syncthreads();
    fault_finish(buf, out);
  }
}

// Planted: a full-mask shuffle after half of the warp has returned.
__global__ void fault_shuffle_exited_lane_kernel(const float* x, float* out) {
  const int lane = threadIdx.x % kWarp;
  float v = x[blockIdx.x * kFaultThreads + threadIdx.x];
  if (lane >= 16) return;
  v += __shfl_xor_sync(kFullMask, v, 1);
  if (threadIdx.x == 0) out[blockIdx.x] = v;
}

}  // namespace fastbert::cuda
