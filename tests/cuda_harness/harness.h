// A CPU execution harness for fastbert's CUDA kernels (csrc/cuda/*.cuh), for machines without a GPU.
//
// Include this header before a kernel header and compile with the host compiler (g++ -std=c++20). It gives
// the kernel source what CUDA gives it:
//   threadIdx / blockIdx / blockDim / gridDim / warpSize, dim3, uint2 / uint4 / float4;
//   __syncthreads, __syncwarp, __shfl{,_xor,_up,_down}_sync, __ballot_sync, __all_sync, __any_sync, and
//   fbh::warp_gather for the warp-wide tensor-core mma (emulated in csrc/cuda/mma.cuh);
//   static shared memory through FB_SHARED(type, name, count) (csrc/cuda/common.cuh; plain `__shared__ x`
//   also compiles, as a `static`, but is neither NaN-filled nor bounds-checked: kernels use FB_SHARED) and
//   dynamic shared memory through fastbert::cuda::dynamic_smem<T>();
//   atomics, the math intrinsics the kernels use, c10::Half / c10::BFloat16 as the 16-bit types;
//   a kernel assert (FB_KERNEL_ASSERT) that stops the run with the block and thread that failed.
//
// The launcher, fbh::launch(grid, block, smem_bytes, kernel, args...), is deterministic: the blocks run one
// after another; inside a block every CUDA thread is a fiber (ucontext) and the fibers run one at a time, each
// from one barrier (__syncthreads, or a warp collective) to the next, in forward thread order or, after
// fbh::set_order(fbh::Order::Reverse), in reverse order (blocks too). Every shared-memory array, static or
// dynamic, is its own heap allocation of exactly its size, filled with 0xFF bytes (NaN for float/half/bf16)
// before each block, so a read of shared memory nobody wrote, a missing barrier (the two orders then differ)
// and an out-of-range shared or global access (under -fsanitize=address) all show.
//
// Strictness: a __syncthreads that some threads of the block never reach (they exited), a warp collective whose
// mask names a lane that exited or does not exist, lanes of one collective passing different masks, or a
// shuffle reading a lane outside the mask: each is reported and the process exits with status 2 (a deadlock
// with every thread waiting and none able to go on is reported the same way). Launch limits are checked as
// a GPU would: <= 1024 threads per block, grid.y/z <= 65535, shared memory <= 48 KiB per block.
#pragma once
#define FASTBERT_CUDA_HARNESS 1

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define FBH_ASAN 1
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old);
}
#endif

// ------------------------------------------------------------------ fiber switching
// On x86-64 a 14-instruction stack switch (callee-saved registers only): glibc's swapcontext makes a
// sigprocmask system call per switch, and under ASan its interceptor clears the shadow of the whole target
// stack per switch, which made the ASan run ~30x slower than the plain one. Elsewhere: ucontext.
#if defined(__x86_64__)
#define FBH_ASM_SWITCH 1
extern "C" void fbh_switch(void** save_sp, void* load_sp);
asm(R"(
.text
.globl fbh_switch
.type fbh_switch,@function
fbh_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size fbh_switch, .-fbh_switch
.section .note.GNU-stack,"",@progbits
.text
)");
#endif

// ------------------------------------------------------------------ CUDA keywords and types
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

struct uint3 { unsigned x = 0, y = 0, z = 0; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) float4 { float x, y, z, w; };

namespace fbh {

enum class Order { Forward, Reverse };

[[noreturn]] inline void fail(const char* what);

struct Fiber {
#ifdef FBH_ASM_SWITCH
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
  char* stack = nullptr;
  uint3 tid;
  enum State { Ready, WaitBlock, WaitWarp, Done } state = Ready;
  uint64_t warp_seq = 0;      // warp collectives this thread has arrived at
  unsigned wait_mask = 0;
  void* fake_stack = nullptr;  // ASan's fake stack while switched out
};

struct WarpSlots {
  uint64_t value[2][32];
  unsigned mask[2][32];
};

struct SharedArray {
  const void* key;
  void* ptr;
  size_t bytes;
};

struct State {
  Order order = Order::Forward;
  dim3 grid, block;
  uint3 block_idx;
  size_t dyn_bytes = 0;
  unsigned char* dyn = nullptr;
  std::vector<SharedArray> shared;  // static shared arrays of the running block
  size_t static_bytes = 0;
  std::vector<Fiber> fibers;
  std::vector<char*> stacks;  // reused across launches
  std::vector<WarpSlots> warps;
  Fiber* cur = nullptr;
#ifdef FBH_ASM_SWITCH
  void* sched_sp = nullptr;
#else
  ucontext_t sched;
#endif
  void* sched_fake = nullptr;
  const void* main_bottom = nullptr;
  size_t main_size = 0;
  std::function<void()> body;
  uint64_t launches = 0;
};

inline State& st() {
  static State s;
  return s;
}

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kSharedLimit = 48 * 1024;

inline void set_order(Order o) { st().order = o; }

[[noreturn]] inline void fail(const char* what) {
  State& s = st();
  if (s.cur) {
    std::fprintf(stderr, "fbh: %s (block (%u,%u,%u), thread (%u,%u,%u), launch %llu)\n", what, s.block_idx.x,
                 s.block_idx.y, s.block_idx.z, s.cur->tid.x, s.cur->tid.y, s.cur->tid.z,
                 (unsigned long long)s.launches);
  } else {
    std::fprintf(stderr, "fbh: %s (block (%u,%u,%u), launch %llu)\n", what, s.block_idx.x, s.block_idx.y, s.block_idx.z,
                 (unsigned long long)s.launches);
  }
  std::fflush(stderr);
  std::_Exit(2);
}

inline unsigned linear_tid(const Fiber& f) {
  const State& s = st();
  return f.tid.x + s.block.x * (f.tid.y + s.block.y * f.tid.z);
}

// ---- switching between the scheduler and the fibers

inline void switch_to_scheduler() {
  State& s = st();
  Fiber* f = s.cur;
#ifdef FBH_ASAN
  __sanitizer_start_switch_fiber(f->state == Fiber::Done ? nullptr : &f->fake_stack, s.main_bottom, s.main_size);
#endif
#ifdef FBH_ASM_SWITCH
  fbh_switch(&f->sp, s.sched_sp);
#else
  swapcontext(&f->ctx, &s.sched);
#endif
#ifdef FBH_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, nullptr, nullptr);
#endif
}

inline void fiber_entry() {
  State& s = st();
#ifdef FBH_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &s.main_bottom, &s.main_size);
#endif
  s.body();
  s.cur->state = Fiber::Done;
  switch_to_scheduler();
  fail("a finished fiber was resumed");
}

inline void resume(Fiber& f) {
  State& s = st();
  s.cur = &f;
#ifdef FBH_ASAN
  __sanitizer_start_switch_fiber(&s.sched_fake, f.stack, kStackBytes);
#endif
#ifdef FBH_ASM_SWITCH
  fbh_switch(&s.sched_sp, f.sp);
#else
  swapcontext(&s.sched, &f.ctx);
#endif
#ifdef FBH_ASAN
  __sanitizer_finish_switch_fiber(s.sched_fake, nullptr, nullptr);
#endif
  s.cur = nullptr;
}

// ---- barriers and warp collectives

inline void syncthreads() {
  State& s = st();
  if (!s.cur) fail("__syncthreads outside a kernel");
  s.cur->state = Fiber::WaitBlock;
  switch_to_scheduler();
}

inline unsigned lane_id() { return linear_tid(*st().cur) & 31u; }

// A lane waiting at warp collective number `seq` may go on once every lane of its mask has arrived there.
inline bool warp_ready(const Fiber& f) {
  State& s = st();
  const unsigned t = linear_tid(f), base = t & ~31u;
  for (unsigned l = 0; l < 32; ++l) {
    if (!(f.wait_mask >> l & 1u)) continue;
    if (base + l >= s.fibers.size()) fail("a warp collective's mask names a lane beyond the block");
    if (s.fibers[base + l].warp_seq < f.warp_seq) return false;
  }
  return true;
}

// Deposits `bits` for this lane, waits for the mask's lanes, returns the slot row of this collective.
inline const WarpSlots* warp_collective(unsigned mask, uint64_t bits, unsigned* row) {
  State& s = st();
  Fiber* f = s.cur;
  if (!f) fail("a warp collective outside a kernel");
  const unsigned t = linear_tid(*f), lane = t & 31u;
  if (!(mask >> lane & 1u)) fail("a warp collective's mask does not name the calling lane");
  WarpSlots& w = s.warps[t >> 5];
  const unsigned r = f->warp_seq & 1u;
  w.value[r][lane] = bits;
  w.mask[r][lane] = mask;
  f->warp_seq += 1;
  f->wait_mask = mask;
  f->state = Fiber::WaitWarp;
  switch_to_scheduler();
  for (unsigned l = 0; l < 32; ++l)
    if ((mask >> l & 1u) && w.mask[r][l] != mask) fail("lanes of one warp collective passed different masks");
  *row = r;
  return &w;
}

// Every lane's `bits`, in one warp collective of the whole warp: what the emulated warp-wide instructions
// (the tensor-core mma of csrc/cuda/mma.cuh) read of the other lanes' registers.
inline void warp_gather(uint64_t bits, uint64_t out[32]) {
  unsigned r;
  const WarpSlots* w = warp_collective(0xffffffffu, bits, &r);
  for (unsigned l = 0; l < 32; ++l) out[l] = w->value[r][l];
}

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "warp shuffles move at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}

template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

template <typename T>
inline T shfl_from(unsigned mask, T v, int src) {
  unsigned r;
  const WarpSlots* w = warp_collective(mask, to_bits(v), &r);
  if (!(mask >> src & 1u)) fail("a shuffle reads a lane outside its mask");
  return from_bits<T>(w->value[r][src]);
}

// ---- shared memory

// Shared arrays are exact-size heap blocks under ASan; otherwise they get kSmemGuard bytes of 0xFF on each
// side (an out-of-range read then sees NaN, an out-of-range write is caught when the block ends).
#ifdef FBH_ASAN
constexpr size_t kSmemGuard = 0;
#else
constexpr size_t kSmemGuard = 64;
#endif

inline void* smem_alloc(size_t bytes) {
  auto* p = static_cast<unsigned char*>(std::malloc(bytes + 2 * kSmemGuard + (bytes == 0)));
  std::memset(p, 0xFF, bytes + 2 * kSmemGuard);
  return p + kSmemGuard;
}

inline void smem_free(void* ptr, size_t bytes, const char* what) {
  auto* p = static_cast<unsigned char*>(ptr) - kSmemGuard;
  for (size_t k = 0; k < kSmemGuard; ++k)
    if (p[k] != 0xFF || p[kSmemGuard + bytes + k] != 0xFF) fail(what);
  std::free(p);
}

inline void* block_shared(const void* key, size_t bytes) {
  State& s = st();
  for (auto& a : s.shared)
    if (a.key == key) return a.ptr;
  s.static_bytes += bytes;
  if (s.static_bytes + s.dyn_bytes > kSharedLimit) fail("more than 48 KiB of shared memory in one block");
  void* p = smem_alloc(bytes);
  s.shared.push_back({key, p, bytes});
  return p;
}

inline void* dynamic_smem() { return st().dyn; }

// ---- the launcher

inline void run_block() {
  State& s = st();
  const unsigned n = s.block.x * s.block.y * s.block.z;
  s.static_bytes = 0;
  s.dyn = static_cast<unsigned char*>(smem_alloc(s.dyn_bytes));
  s.warps.assign((n + 31) / 32, WarpSlots{});
  for (unsigned t = 0; t < n; ++t) {
    Fiber& f = s.fibers[t];
    f.tid = uint3{t % s.block.x, (t / s.block.x) % s.block.y, t / (s.block.x * s.block.y)};
    f.state = Fiber::Ready;
    f.warp_seq = 0;
    f.fake_stack = nullptr;
#ifdef FBH_ASM_SWITCH
    // A fresh stack that fbh_switch "returns" into fiber_entry from: 6 zeroed registers, then the entry address,
    // then a null return address for fiber_entry (which never returns); 16-byte aligned as at a call.
    auto* top = reinterpret_cast<void**>((reinterpret_cast<uintptr_t>(f.stack) + kStackBytes) & ~uintptr_t(15));
    void** sp = top - 1;
    *sp = nullptr;
    *--sp = reinterpret_cast<void*>(&fiber_entry);
    for (int k = 0; k < 6; ++k) *--sp = nullptr;
    f.sp = sp;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_entry, 0);
#endif
  }
  unsigned done = 0;
  for (;;) {
    bool progress = false;
    for (unsigned k = 0; k < n; ++k) {
      Fiber& f = s.fibers[s.order == Order::Forward ? k : n - 1 - k];
      if (f.state == Fiber::Ready || (f.state == Fiber::WaitWarp && warp_ready(f))) {
        f.state = Fiber::Ready;
        resume(f);
        if (f.state == Fiber::Done) ++done;
        progress = true;
      }
    }
    if (done == n) break;
    if (progress) continue;
    unsigned waiting = 0;
    for (auto& f : s.fibers) waiting += f.state == Fiber::WaitBlock;
    if (waiting > 0 && waiting + done == n) {
      if (done > 0) fail("__syncthreads reached by only part of the block (other threads exited)");
      for (unsigned t = 0; t < n; ++t) s.fibers[t].state = Fiber::Ready;
      continue;
    }
    fail("deadlock: no thread of the block can go on (a warp collective or barrier some threads never reach)");
  }
  for (auto& a : s.shared) smem_free(a.ptr, a.bytes, "out-of-range write to static shared memory");
  s.shared.clear();
  smem_free(s.dyn, s.dyn_bytes, "out-of-range write to dynamic shared memory");
  s.dyn = nullptr;
}

template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 block, size_t smem_bytes, Kernel kernel, Args... args) {
  State& s = st();
  s.launches += 1;
  const uint64_t n = uint64_t(block.x) * block.y * block.z;
  if (n == 0 || n > 1024) fail("a block must have 1 to 1024 threads");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) fail("an empty grid (a GPU launch would fail)");
  if (grid.y > 65535 || grid.z > 65535) fail("grid.y and grid.z must be <= 65535");
  if (smem_bytes > kSharedLimit) fail("more than 48 KiB of dynamic shared memory");
  s.grid = grid;
  s.block = block;
  s.dyn_bytes = smem_bytes;
  while (s.stacks.size() < n) s.stacks.push_back(static_cast<char*>(std::malloc(kStackBytes)));
  s.fibers.assign(n, Fiber{});
  for (uint64_t t = 0; t < n; ++t) s.fibers[t].stack = s.stacks[t];
  s.body = [&] { kernel(args...); };
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  for (uint64_t k = 0; k < nblocks; ++k) {
    const uint64_t b = s.order == Order::Forward ? k : nblocks - 1 - k;
    s.block_idx =
        uint3{unsigned(b % grid.x), unsigned((b / grid.x) % grid.y), unsigned(b / (uint64_t(grid.x) * grid.y))};
    run_block();
  }
  s.fibers.clear();
  s.body = nullptr;
}

inline const uint3& thread_idx() {
  if (!st().cur) fail("threadIdx read outside a kernel");
  return st().cur->tid;
}

inline dim3 as_dim3(uint3 u) { return dim3(u.x, u.y, u.z); }

[[noreturn]] inline void kernel_assert_fail(const char* expr, const char* file, int line) {
  char buf[512];
  std::snprintf(buf, sizeof buf, "kernel assertion failed: %s at %s:%d", expr, file, line);
  fail(buf);
}

}  // namespace fbh

// ------------------------------------------------------------------ what kernels see
#define threadIdx (::fbh::thread_idx())
#define blockIdx (::fbh::st().block_idx)
#define blockDim (::fbh::st().block)
#define gridDim (::fbh::st().grid)
#define warpSize 32

inline void __syncthreads() { fbh::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  unsigned r;
  fbh::warp_collective(mask, 0, &r);
}
inline void __threadfence() {}
inline void __threadfence_block() {}

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  const int lane = int(fbh::lane_id()), base = lane & ~(width - 1);
  return fbh::shfl_from(mask, v, base + (src & (width - 1)));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = int(fbh::lane_id()), base = lane & ~(width - 1);
  int src = lane ^ lane_mask;
  if (src >= base + width) src = lane;
  return fbh::shfl_from(mask, v, src);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = int(fbh::lane_id()), base = lane & ~(width - 1);
  int src = lane + int(delta);
  if (src >= base + width) src = lane;
  return fbh::shfl_from(mask, v, src);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = int(fbh::lane_id()), base = lane & ~(width - 1);
  int src = lane - int(delta);
  if (src < base) src = lane;
  return fbh::shfl_from(mask, v, src);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  unsigned r;
  const fbh::WarpSlots* w = fbh::warp_collective(mask, pred != 0, &r);
  unsigned out = 0;
  for (unsigned l = 0; l < 32; ++l)
    if ((mask >> l & 1u) && w->value[r][l]) out |= 1u << l;
  return out;
}
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __int_as_float(int x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline int __float_as_int(float f) {
  int x;
  std::memcpy(&x, &f, 4);
  return x;
}
inline float __uint_as_float(unsigned x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned x;
  std::memcpy(&x, &f, 4);
  return x;
}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

// Atomics: the fibers of a block run one at a time, so a plain read-modify-write is atomic.
template <typename T>
inline T atomicAdd(T* p, T v) {
  T old = *p;
  *p = old + v;
  return old;
}
template <typename T>
inline T atomicMax(T* p, T v) {
  T old = *p;
  *p = old < v ? v : old;
  return old;
}
template <typename T>
inline T atomicMin(T* p, T v) {
  T old = *p;
  *p = v < old ? v : old;
  return old;
}
template <typename T>
inline T atomicExch(T* p, T v) {
  T old = *p;
  *p = v;
  return old;
}
template <typename T>
inline T atomicCAS(T* p, T cmp, T v) {
  T old = *p;
  if (old == cmp) *p = v;
  return old;
}
template <typename T>
inline T atomicOr(T* p, T v) {
  T old = *p;
  *p = old | v;
  return old;
}
