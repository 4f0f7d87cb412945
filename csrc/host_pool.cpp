// host_pool: the CPU memory of fastbert's forwards, kept for the next forward and split to fit it.
//
// Why: a forward allocates and frees buffers of 0.25-50 MB (activations, oneDNN's outputs and scratchpads), and
// their sizes change with every batch shape. glibc serves them from heaps whose freed blocks stay resident where
// thread timing and the order of sizes put them: over 2000 varied-shape forwards of bert-base width the process grew
// by -5 to +132 MB in its second half, run to run (docs/notes/2026-12-low-precision.md), and without glibc's moving
// mmap threshold settling, every buffer was faulted in afresh. This is the CUDA caching allocator's design on the
// host: large blocks carved from mmapped segments, best fit by (size, address), split when the rest is worth keeping,
// merged with free neighbours when freed; a segment is mapped only when no free block fits (wholly free segments
// that together would cover it are unmapped first: exchanged, not added), so the pool settles at the largest
// working set the job has seen instead of creeping, and freed pages are reused without faults.
//
// Scope: PyTorch's CPU allocator is wrapped once (c10::SetCPUAllocator); the wrapper sends an allocation here only
// on a thread inside a fastbert forward (set_scope, from fastbert.runtime.host_pool) or inside the autograd pass that
// reached one's output (route_backward: while the thread runs that graph task, so the routing cannot outlive the
// pass, even one that raises), and only from kMinBytes to kMaxBytes; everything else goes to the allocator it
// wrapped, unchanged. Blocks are freed from any thread (a forward's output outlives it). ideep allocates through
// c10's raw_allocate, which needs data == context: so the deleter finds the block by address. release() unmaps
// wholly free segments.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <pthread.h>
#include <sys/mman.h>
#include <torch/csrc/autograd/graph_task.h>

#include <cstddef>
#include <memory>
#include <mutex>
#include <set>
#include <unordered_map>

#include "host_pool.h"

namespace fastbert::host_pool {
namespace {

constexpr size_t kPage = 4096;
constexpr size_t kMinBytes = 256 << 10;     // smaller: glibc's bins serve them well
constexpr size_t kMaxBytes = size_t(256) << 20;  // larger: a one-off giant batch should not stay mapped
constexpr size_t kSegmentRound = 2 << 20;   // segments in 2 MiB steps

struct Block {
  char* ptr;
  size_t size;
  bool free;
  Block* prev;  // neighbours in the same segment, by address
  Block* next;
};

struct BySizeThenAddress {
  bool operator()(const Block* a, const Block* b) const {
    return a->size != b->size ? a->size < b->size : a->ptr < b->ptr;
  }
};

class Pool final : public c10::Allocator {
 public:
  void install() {
    std::call_once(installed_, [this] {
      base_ = c10::GetCPUAllocator();
      if (base_->raw_deleter() == nullptr) return;  // frees of its raw allocations could not be passed on
      c10::SetCPUAllocator(this, /*priority=*/0);   // the default's priority: a later allocator of any priority wins
      pthread_atfork([] { instance().mutex_.lock(); }, [] { instance().mutex_.unlock(); },
                     [] { instance().mutex_.unlock(); });
    });
  }
  bool active() const { return c10::GetCPUAllocator() == this; }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes || n > kMaxBytes || !routed()) return base_->allocate(n);
    char* p = take((n + kPage - 1) / kPage * kPage);
    return {p, p, &Pool::free_any, c10::Device(c10::kCPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &Pool::free_any; }
  void copy_data(void* dest, const void* src, size_t count) const override { default_copy_data(dest, src, count); }

  Stats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

  size_t release() {
    std::lock_guard<std::mutex> lock(mutex_);
    return unmap_idle();
  }

  static Pool& instance() {
    static Pool* pool = new Pool();  // never destroyed: blocks may be freed during exit
    return *pool;
  }

  static thread_local bool in_scope;
  static thread_local int backward_task;  // the autograd graph task routed here, or -1

  static bool routed() {
    return in_scope || (backward_task >= 0 && backward_task == torch::autograd::get_current_graph_task_id());
  }

 private:
  // Unmaps the wholly free segments (a block with no neighbours spans its segment); returns the bytes. Locked.
  size_t unmap_idle() {
    size_t unmapped = 0;
    for (auto it = free_.begin(); it != free_.end();) {
      Block* b = *it;
      if (b->prev != nullptr || b->next != nullptr) {  // part of a segment still in use
        ++it;
        continue;
      }
      it = free_.erase(it);
      munmap(b->ptr, b->size);
      unmapped += b->size;
      --stats_.segments;
      delete b;
    }
    stats_.mapped -= unmapped;
    return unmapped;
  }

  size_t idle_bytes() const {
    size_t idle = 0;
    for (const Block* b : free_) idle += b->prev == nullptr && b->next == nullptr ? b->size : 0;
    return idle;
  }

  // A new segment for `bytes`. Wholly free segments that together would cover it are unmapped first (the pool
  // exchanges memory no request fits for memory one does, rather than growing: a run of ever larger requests
  // would otherwise keep one segment of each size), and before a second try when mmap fails.
  Block* map_segment(size_t bytes) {
    const size_t size = (bytes + kSegmentRound - 1) / kSegmentRound * kSegmentRound;
    auto b = std::make_unique<Block>(Block{nullptr, size, true, nullptr, nullptr});
    if (idle_bytes() >= bytes) unmap_idle();
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED && unmap_idle() > 0)
      p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(p != MAP_FAILED, "fastbert host pool: out of memory mapping ", size, " bytes");
    b->ptr = static_cast<char*>(p);
    stats_.mapped += size;
    ++stats_.segments;
    return b.release();
  }

  // A free block of at least `bytes` (best fit), split if what is left is worth a block of its own. What can throw
  // (the remainder's node, the map's slot, mmap) comes before the pool's state changes.
  char* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto rest = std::make_unique<Block>();
    live_.reserve(live_.size() + 1);
    Block key{nullptr, bytes, true, nullptr, nullptr};
    auto it = free_.lower_bound(&key);
    Block* b;
    if (it != free_.end()) {
      b = *it;
      free_.erase(it);
    } else {
      b = map_segment(bytes);
    }
    if (b->size - bytes >= kMinBytes) {
      *rest = Block{b->ptr + bytes, b->size - bytes, true, b, b->next};
      if (b->next != nullptr) b->next->prev = rest.get();
      b->next = rest.get();
      b->size = bytes;
      free_.insert(rest.release());
    }
    b->free = false;
    live_.emplace(b->ptr, b);
    stats_.allocated += b->size;
    c10::reportMemoryUsageToProfiler(b->ptr, static_cast<int64_t>(b->size), stats_.allocated, stats_.mapped,
                                     c10::Device(c10::kCPU));
    return b->ptr;
  }

  // Returns the block at p to the pool, merged with free neighbours; false if p is not the pool's.
  bool give_back(void* p) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = live_.find(p);
    if (found == live_.end()) return false;
    Block* b = found->second;
    live_.erase(found);
    stats_.allocated -= b->size;
    c10::reportMemoryUsageToProfiler(p, -static_cast<int64_t>(b->size), stats_.allocated, stats_.mapped,
                                     c10::Device(c10::kCPU));
    b->free = true;
    if (b->prev != nullptr && b->prev->free) b = merge(b->prev, b);
    if (b->next != nullptr && b->next->free) b = merge(b, b->next);
    free_.insert(b);
    return true;
  }

  // a and its next neighbour b become a (a may be in free_, b is not kept).
  Block* merge(Block* a, Block* b) {
    free_.erase(a);
    free_.erase(b);
    a->size += b->size;
    a->next = b->next;
    if (b->next != nullptr) b->next->prev = a;
    delete b;
    return a;
  }

  static void free_any(void* p) {
    Pool& pool = instance();
    if (!pool.give_back(p)) pool.base_->raw_deleter()(p);
  }

  c10::Allocator* base_ = nullptr;
  std::once_flag installed_;
  std::mutex mutex_;
  std::set<Block*, BySizeThenAddress> free_;
  std::unordered_map<void*, Block*> live_;
  Stats stats_;
};

thread_local bool Pool::in_scope = false;
thread_local int Pool::backward_task = -1;

}  // namespace

bool set_scope(bool on) {
  Pool& pool = Pool::instance();
  if (on) pool.install();
  const bool was = Pool::in_scope;
  Pool::in_scope = on && pool.active();
  return was;
}

void route_backward() {
  if (Pool::instance().active()) Pool::backward_task = torch::autograd::get_current_graph_task_id();
}

bool active() { return Pool::instance().active(); }
Stats stats() { return Pool::instance().stats(); }
size_t release() { return Pool::instance().release(); }

}  // namespace fastbert::host_pool
