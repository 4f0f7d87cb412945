// The host memory pool of fastbert's CPU forwards (csrc/host_pool.cpp says why and how).
#pragma once

#include <cstddef>

namespace fastbert::host_pool {

struct Stats {
  size_t mapped = 0;     // bytes of segments mapped
  size_t allocated = 0;  // bytes of blocks in use
  size_t segments = 0;
};

// Route this thread's CPU allocations of pool size to the pool (on) or not; returns the previous setting. The
// first call with on installs the pool as PyTorch's CPU allocator (at the default allocator's priority); where
// another allocator replaced it or outranks it, the pool stays out of the way and the setting stays off.
bool set_scope(bool on);
// Route this thread's CPU allocations of pool size to the pool for the rest of the autograd graph task it is running
// (a backward pass; nothing outside one), on top of set_scope.
void route_backward();
bool active();
Stats stats();
size_t release();  // unmap wholly free segments; returns the bytes unmapped

}  // namespace fastbert::host_pool
