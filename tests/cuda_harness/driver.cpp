// The test driver of the CUDA harness: runs fastbert's CUDA kernels (csrc/cuda/*.cuh) on the CPU.
//
//   driver MANIFEST
//
// Each line of MANIFEST is one case, `key=value` tokens: op=<op> dtype=f32|f16|bf16 out=<prefix>, inputs as
// in.<name>=<raw file>, and scalars. The driver loads the inputs, runs the op's kernels exactly as the .cu
// launcher in csrc/cuda/ configures them (the same config helpers), once with the harness's forward thread
// order and once with the reverse order, and writes every output to <prefix>.<name>.<fwd|rev>.bin.
// Output buffers start as 0xFF bytes (NaN), so an element no thread writes shows. Without AddressSanitizer
// every buffer has 64-byte guard zones on both sides, checked after each launch sequence (an out-of-range
// write fails the run); under -fsanitize=address the buffers are exact and ASan reports out-of-range access.
// Exit status: 0 all cases ran; 2 the harness found a fault (deadlock, divergent barrier, kernel assert,
// guard zone overwritten); ASan's own status on a memory error; 1 bad manifest.
#include "harness.h"

#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>

#include <unistd.h>

#include <algorithm>
#include <numeric>

#include "cuda/attention.cuh"
#include "cuda/attention_backward.cuh"
#include "cuda/attention_mma.cuh"
#include "cuda/bias_act.cuh"
#include "cuda/bias_act_backward.cuh"
#include "cuda/bias_residual_layernorm.cuh"
#include "cuda/bias_residual_layernorm_backward.cuh"
#include "cuda/embeddings.cuh"
#include "cuda/embeddings_backward.cuh"
#include "cuda/pack.cuh"
#include "faults.cuh"

using namespace fastbert::cuda;
using fastbert::Activation;

namespace {

#ifdef FBH_ASAN
constexpr size_t kGuard = 0;
#else
constexpr size_t kGuard = 64;
#endif

// A device buffer: exact size under ASan, else guarded; `misalign` shifts the data by that many bytes.
struct Buf {
  std::vector<unsigned char> mem;
  size_t bytes = 0, off = 0;
  Buf(size_t n, size_t misalign = 0) : mem(n + 2 * kGuard + misalign + (n == 0 ? 1 : 0), 0xFF), bytes(n),
                                        off(kGuard + misalign) {}
  void* ptr() { return mem.data() + off; }
  template <typename T> T* as() { return reinterpret_cast<T*>(ptr()); }
  bool guards_ok() const {
    for (size_t k = 0; k < off; ++k)
      if (mem[k] != 0xFF) return false;
    for (size_t k = off + bytes; k < mem.size(); ++k)
      if (mem[k] != 0xFF) return false;
    return true;
  }
};

[[noreturn]] void die(const std::string& msg, int code = 1) {
  std::fprintf(stderr, "driver: %s\n", msg.c_str());
  std::exit(code);
}

struct Case {
  std::map<std::string, std::string> kv;
  std::map<std::string, std::unique_ptr<Buf>> in, out;
  size_t misalign = 0;

  bool has(const std::string& k) const { return kv.count(k) > 0; }
  std::string str(const std::string& k) const {
    auto it = kv.find(k);
    if (it == kv.end()) die("case lacks " + k);
    return it->second;
  }
  int64_t i(const std::string& k) const { return std::stoll(str(k)); }
  double f(const std::string& k) const { return std::stod(str(k)); }

  bool has_in(const std::string& name) const { return in.count(name) > 0; }
  template <typename T> T* input(const std::string& name) {
    auto it = in.find(name);
    if (it == in.end()) die("case lacks in." + name);
    return it->second->as<T>();
  }
  template <typename T> T* opt_input(const std::string& name) { return has_in(name) ? input<T>(name) : nullptr; }
  template <typename T> T* output(const std::string& name, size_t count) {
    auto b = std::make_unique<Buf>(count * sizeof(T), misalign);
    T* p = b->as<T>();
    out[name] = std::move(b);
    return p;
  }
  void load_inputs() {
    for (auto& [k, v] : kv) {
      if (k.rfind("in.", 0) != 0) continue;
      std::ifstream f(v, std::ios::binary | std::ios::ate);
      if (!f) die("cannot read " + v);
      const size_t n = size_t(f.tellg());
      f.seekg(0);
      auto b = std::make_unique<Buf>(n, misalign);
      f.read(static_cast<char*>(b->ptr()), std::streamsize(n));
      in[k.substr(3)] = std::move(b);
    }
  }
  void check_guards() const {
    for (auto* m : {&in, &out})
      for (auto& [name, b] : *m)
        if (!b->guards_ok()) {
          std::fprintf(stderr, "fbh: out-of-range write next to buffer '%s'\n", name.c_str());
          std::exit(2);
        }
  }
  void write_outputs(const std::string& tag) const {
    const std::string prefix = str("out");
    for (auto& [name, b] : out) {
      std::ofstream f(prefix + "." + name + "." + tag + ".bin", std::ios::binary);
      f.write(static_cast<const char*>(const_cast<Buf&>(*b).ptr()), std::streamsize(b->bytes));
    }
  }
};

template <typename T>
bool aligned(const T* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ---------------------------------------------------------------- the ops, configured as csrc/cuda/*.cu does

void run_pack(Case& c) {
  const int64_t B = c.i("B"), L = c.i("L");
  const bool* keep = c.input<bool>("keep");
  auto counts = std::make_unique<Buf>(size_t(B) * 4);
  int32_t* cu = c.output<int32_t>("cu_seqlens", size_t(B + 1));
  if (B > 0) {
    fbh::launch(dim3(unsigned(B)), dim3(kPackThreads), 0, pack_count_kernel, keep, L, counts->as<int32_t>());
  }
  fbh::launch(dim3(1), dim3(kPackThreads), 0, pack_scan_kernel, (const int32_t*)counts->as<int32_t>(), B, cu);
  const int64_t T = cu[B];  // the .cu launcher reads this with a device-to-host copy (a sync)
  int64_t* idx = c.output<int64_t>("indices", size_t(T));
  int64_t* pos = c.output<int64_t>("positions", size_t(T));
  if (T > 0) fbh::launch(dim3(unsigned(B)), dim3(kPackThreads), 0, pack_write_kernel, keep, L, (const int32_t*)cu, idx, pos);
}

template <typename E>
void unpack_copy(Case& c, const void* x, const int32_t* inv, int64_t N, int64_t row_bytes, void* out) {
  const int64_t W = row_bytes / int64_t(sizeof(E));
  fbh::launch(dim3(unpack_grid(N * W)), dim3(kUnpackThreads), 0, unpack_copy_kernel<E>, static_cast<const E*>(x), inv,
              N, W, static_cast<E*>(out));
}

void run_unpack(Case& c) {
  const int64_t B = c.i("B"), L = c.i("L"), C = c.i("C"), T = c.i("T"), es = c.i("elem_size");
  const int64_t N = B * L, row_bytes = C * es;
  const void* x = c.input<unsigned char>("x");
  const int64_t* indices = c.input<int64_t>("indices");
  void* out = c.output<unsigned char>("out", size_t(N * row_bytes));
  if (N == 0 || row_bytes == 0) return;
  auto inv = std::make_unique<Buf>(size_t(N) * 4);
  fbh::launch(dim3(unpack_grid(N)), dim3(kUnpackThreads), 0, unpack_fill_kernel, inv->as<int32_t>(), N);
  if (T > 0) fbh::launch(dim3(unpack_grid(T)), dim3(kUnpackThreads), 0, unpack_scatter_kernel, indices, T, N, inv->as<int32_t>());
  const uintptr_t align = reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(out) | uintptr_t(row_bytes);
  const int32_t* iv = inv->as<int32_t>();
  if (align % 16 == 0) unpack_copy<uint4>(c, x, iv, N, row_bytes, out);
  else if (align % 8 == 0) unpack_copy<uint2>(c, x, iv, N, row_bytes, out);
  else if (align % 4 == 0) unpack_copy<uint32_t>(c, x, iv, N, row_bytes, out);
  else if (align % 2 == 0) unpack_copy<uint16_t>(c, x, iv, N, row_bytes, out);
  else unpack_copy<uint8_t>(c, x, iv, N, row_bytes, out);
  c.check_guards();
}

template <typename T>
void run_bias_act(Case& c) {
  BiasActParams<T> p;
  p.C = c.i("C");
  p.numel = c.i("N") * p.C;
  p.act = static_cast<Activation>(c.i("act"));
  p.x = c.input<T>("x");
  p.bias = c.input<T>("bias");
  p.out = c.output<T>("out", size_t(p.numel));
  if (p.numel == 0) return;
  p.vec = p.C % Vec16<T>::n == 0 && aligned(p.x) && aligned(p.bias) && aligned(p.out);
  fbh::launch(dim3(bias_act_grid(p.numel, p.vec, Vec16<T>::n)), dim3(kBiasActThreads), 0, bias_act_kernel<T>, p);
}

template <typename T>
void run_brln(Case& c) {
  BiasResidualLayerNormParams<T> p;
  p.N = c.i("N");
  p.H = c.i("H");
  p.eps = float(c.f("eps"));
  p.x = c.input<T>("x");
  p.bias = c.opt_input<T>("bias");
  p.residual = c.input<T>("residual");
  p.gamma = c.input<T>("gamma");
  p.beta = c.input<T>("beta");
  p.out = c.output<T>("out", size_t(p.N * p.H));
  p.mean = c.output<float>("mean", size_t(p.N));
  p.rstd = c.output<float>("rstd", size_t(p.N));
  if (p.N == 0) return;
  p.vec = p.H % Vec16<T>::n == 0 && aligned(p.x) && (!p.bias || aligned(p.bias)) && aligned(p.residual) &&
          aligned(p.gamma) && aligned(p.beta) && aligned(p.out);
  const int rows = layernorm_rows_per_block(p.H);
  if (rows == 0) die("H too large");
  fbh::launch(dim3(unsigned(ceil_div(p.N, rows))), dim3(rows * kWarp), size_t(rows) * p.H * sizeof(float),
              bias_residual_layernorm_kernel<T>, p);
}

template <typename T, typename I>
void run_embeddings_typed(Case& c) {
  EmbeddingsParams<T, I> p;
  p.N = c.i("N");
  p.H = c.i("H");
  p.V = c.i("V");
  p.P = c.i("P");
  p.TT = c.has("TT") ? c.i("TT") : 0;
  p.eps = float(c.f("eps"));
  p.ids = c.input<I>("ids");
  p.pos_ids = c.input<I>("pos_ids");
  p.type_ids = c.opt_input<I>("type_ids");
  p.word = c.input<T>("word");
  p.pos = c.input<T>("pos");
  p.type = c.opt_input<T>("type");
  p.gamma = c.input<T>("gamma");
  p.beta = c.input<T>("beta");
  p.out = c.output<T>("out", size_t(p.N * p.H));
  p.mean = c.output<float>("mean", size_t(p.N));
  p.rstd = c.output<float>("rstd", size_t(p.N));
  if (p.N == 0) return;
  p.vec = p.H % Vec16<T>::n == 0 && aligned(p.word) && aligned(p.pos) && (!p.type || aligned(p.type)) &&
          aligned(p.gamma) && aligned(p.beta) && aligned(p.out);
  const int rows = layernorm_rows_per_block(p.H);
  if (rows == 0) die("H too large");
  fbh::launch(dim3(unsigned(ceil_div(p.N, rows))), dim3(rows * kWarp), size_t(rows) * p.H * sizeof(float),
              embeddings_kernel<T, I>, p);
}

template <typename T>
void run_embeddings(Case& c) {
  if (c.str("idtype") == "i32") run_embeddings_typed<T, int32_t>(c);
  else run_embeddings_typed<T, int64_t>(c);
}

template <typename T>
void launch_attention(const AttentionParams<T>& p, int64_t B, int64_t max_seqlen, bool mma) {
  if constexpr (!std::is_same_v<T, float>) {
    if (mma) {  // as csrc/cuda/attention.cu launches attention_mma.cuh
      const dim3 grid(unsigned(ceil_div(max_seqlen, kMmaRows)), unsigned(p.nh), unsigned(B));
      const size_t smem = size_t(attention_mma_smem_bytes(p.d));
      const int dmax = attention_mma_dmax(p.d);
      if (dmax == 32) fbh::launch(grid, dim3(kMmaThreads), smem, attention_mma_kernel<T, 32>, p);
      else if (dmax == 64) fbh::launch(grid, dim3(kMmaThreads), smem, attention_mma_kernel<T, 64>, p);
      else fbh::launch(grid, dim3(kMmaThreads), smem, attention_mma_kernel<T, 128>, p);
      return;
    }
  }
  if (mma) die("attention impl=mma takes f16 or bf16");
  const int dmax = attention_dmax(p.d);
  const dim3 grid(unsigned(ceil_div(max_seqlen, attention_rows(dmax))), unsigned(p.nh), unsigned(B));
  const size_t smem = size_t(attention_smem_bytes(p.d));
  if (dmax == 64) fbh::launch(grid, dim3(kAttnThreads), smem, attention_kernel<T, 64>, p);
  else fbh::launch(grid, dim3(kAttnThreads), smem, attention_kernel<T, 128>, p);
}

template <typename T>
void run_attention(Case& c, bool masked) {
  AttentionParams<T> p{};
  p.nh = int(c.i("nh"));
  p.H = int(c.i("H"));
  p.d = p.H / p.nh;
  p.scale = float(c.f("scale"));
  p.qkv = c.input<T>("qkv");
  p.bias = c.opt_input<T>("bias");
  p.dropout = make_dropout_params(c.f("dropout_p"), c.i("seed"), c.i("offset"));
  int64_t B, max_seqlen;
  if (!masked) {
    B = c.i("B");
    p.total = c.i("T");
    p.max_seqlen = max_seqlen = c.i("max_seqlen");
    p.cu_seqlens = c.input<int32_t>("cu_seqlens");
    p.out = c.output<T>("out", size_t(p.total * p.H));
    p.lse = c.output<float>("lse", size_t(p.nh * p.total));
  } else {
    B = c.i("B");
    p.L = c.i("L");
    p.total = B * p.L;
    max_seqlen = p.L;
    p.mask = c.input<float>("mask");
    p.ms_b = c.i("ms_b");
    p.ms_h = c.i("ms_h");
    p.ms_i = c.i("ms_i");
    p.ms_j = c.i("ms_j");
    p.out = c.output<T>("out", size_t(p.total * p.H));
    p.lse = c.output<float>("lse", size_t(B * p.nh * p.L));
  }
  if (p.total == 0 || B == 0 || max_seqlen == 0) return;
  p.vec = p.d % Vec16<T>::n == 0 && aligned(p.qkv) && (!p.bias || aligned(p.bias));
  launch_attention(p, B, max_seqlen, c.has("impl") && c.str("impl") == "mma");
}

// ---------------------------------------------------------------- backward ops

template <typename T>
void run_bias_act_backward(Case& c) {
  BiasActBackwardParams<T> p;
  p.C = c.i("C");
  p.numel = c.i("N") * p.C;
  p.act = static_cast<Activation>(c.i("act"));
  p.grad = c.input<T>("grad");
  p.x = c.input<T>("x");
  p.bias = c.input<T>("bias");
  p.grad_input = c.output<T>("grad_input", size_t(p.numel));
  if (p.numel == 0) return;
  p.vec = p.C % Vec16<T>::n == 0 && aligned(p.grad) && aligned(p.x) && aligned(p.bias) && aligned(p.grad_input);
  fbh::launch(dim3(bias_act_grid(p.numel, p.vec, Vec16<T>::n)), dim3(kBiasActThreads), 0, bias_act_backward_kernel<T>,
              p);
}

// The row kernel's config as csrc/cuda/ln_backward_host.h picks it (the harness has 48 KiB of shared memory).
inline int harness_ln_backward_warps(int64_t H) {
  const int warps = ln_backward_warps(H, kSmemDefault);
  if (warps == 0) die("H too large for the harness");
  return warps;
}

template <typename T>
void launch_ln_reduce(const float* partials, unsigned blocks, int64_t H, T* grad_w, T* grad_b) {
  fbh::launch(dim3(ln_reduce_grid(H)), dim3(kLnReduceThreads), 0, ln_backward_reduce_kernel<T>, partials,
              int64_t(blocks), H, grad_w, grad_b);
}

template <typename T>
void run_brln_backward(Case& c) {
  BrlnBackwardParams<T> p;
  p.N = c.i("N");
  p.H = c.i("H");
  p.grad_out = c.input<T>("grad_out");
  p.x = c.input<T>("x");
  p.bias = c.opt_input<T>("bias");
  p.residual = c.input<T>("residual");
  p.gamma = c.input<T>("gamma");
  p.mean = c.input<float>("mean");
  p.rstd = c.input<float>("rstd");
  p.grad_s = c.output<T>("grad_s", size_t(p.N * p.H));
  T* grad_w = c.output<T>("grad_w", size_t(p.H));
  T* grad_b = c.output<T>("grad_b", size_t(p.H));
  if (p.N == 0) {  // the launcher returns zeros
    std::fill(grad_w, grad_w + p.H, T(0.f));
    std::fill(grad_b, grad_b + p.H, T(0.f));
    return;
  }
  const int warps = harness_ln_backward_warps(p.H);
  const unsigned grid = ln_backward_grid(p.N, warps);
  Buf partials(size_t(grid) * 2 * size_t(p.H) * sizeof(float));
  p.partials = partials.as<float>();
  p.vec = p.H % Vec16<T>::n == 0 && aligned(p.grad_out) && aligned(p.x) && (!p.bias || aligned(p.bias)) &&
          aligned(p.residual) && aligned(p.gamma) && aligned(p.grad_s);
  fbh::launch(dim3(grid), dim3(warps * kWarp), size_t(ln_backward_smem(p.H, warps)), brln_backward_kernel<T>, p);
  launch_ln_reduce<T>(p.partials, grid, p.H, grad_w, grad_b);
  if (!partials.guards_ok()) die("out-of-range write next to the partials", 2);
}

template <typename T, typename I>
void run_embeddings_backward_typed(Case& c) {
  EmbeddingsBackwardParams<T, I> p;
  p.N = c.i("N");
  p.H = c.i("H");
  p.V = c.i("V");
  p.P = c.i("P");
  p.TT = c.has("TT") ? c.i("TT") : 0;
  p.grad_out = c.input<T>("grad_out");
  p.ids = c.input<I>("ids");
  p.pos_ids = c.input<I>("pos_ids");
  p.type_ids = c.opt_input<I>("type_ids");
  p.word = c.input<T>("word");
  p.pos = c.input<T>("pos");
  p.type = c.opt_input<T>("type");
  p.gamma = c.input<T>("gamma");
  p.mean = c.input<float>("mean");
  p.rstd = c.input<float>("rstd");
  // The launcher's outputs: zero-filled tables (the type table only when there is one), then the LN gradients.
  T* g_word = c.output<T>("grad_word", size_t(p.V * p.H));
  T* g_pos = c.output<T>("grad_pos", size_t(p.P * p.H));
  T* g_type = p.type ? c.output<T>("grad_type", size_t(p.TT * p.H)) : nullptr;
  T* g_w = c.output<T>("grad_w", size_t(p.H));
  T* g_b = c.output<T>("grad_b", size_t(p.H));
  std::fill(g_word, g_word + p.V * p.H, T(0.f));
  std::fill(g_pos, g_pos + p.P * p.H, T(0.f));
  if (g_type) std::fill(g_type, g_type + p.TT * p.H, T(0.f));
  std::fill(g_w, g_w + p.H, T(0.f));
  std::fill(g_b, g_b + p.H, T(0.f));
  if (p.N == 0) return;
  const int warps = harness_ln_backward_warps(p.H);
  const unsigned grid = ln_backward_grid(p.N, warps);
  const int64_t tables = p.type ? 3 : 2, K = tables * p.N;
  Buf grad_s(size_t(p.N * p.H) * sizeof(float)), keys(size_t(K) * sizeof(int64_t)),
      partials(size_t(grid) * 2 * size_t(p.H) * sizeof(float));
  p.grad_s = grad_s.as<float>();
  p.keys = keys.as<int64_t>();
  p.partials = partials.as<float>();
  p.vec = p.H % Vec16<T>::n == 0 && aligned(p.grad_out) && aligned(p.word) && aligned(p.pos) &&
          (!p.type || aligned(p.type)) && aligned(p.gamma);
  fbh::launch(dim3(grid), dim3(warps * kWarp), size_t(ln_backward_smem(p.H, warps)),
              embeddings_backward_rows_kernel<T, I>, p);
  launch_ln_reduce<T>(p.partials, grid, p.H, g_w, g_b);

  // at::sort(keys, stable=true) on the host
  const int64_t* kp = keys.as<int64_t>();
  std::vector<int64_t> perm(static_cast<size_t>(K));
  std::iota(perm.begin(), perm.end(), int64_t(0));
  std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return kp[a] < kp[b]; });
  Buf sorted(size_t(K) * sizeof(int64_t)), perm_buf(size_t(K) * sizeof(int64_t));
  for (int64_t i = 0; i < K; ++i) {
    sorted.as<int64_t>()[i] = kp[perm[size_t(i)]];
    perm_buf.as<int64_t>()[i] = perm[size_t(i)];
  }
  const dim3 sgrid = embeddings_scatter_grid(K, p.H);
  Buf ws(size_t(sgrid.x) * 2 * size_t(p.H) * sizeof(float));
  EmbeddingsScatterParams<T> s;
  s.sorted = sorted.as<int64_t>();
  s.perm = perm_buf.as<int64_t>();
  s.grad_s = grad_s.as<float>();
  s.ws = ws.as<float>();
  s.word = g_word;
  s.pos = g_pos;
  s.type = g_type;
  s.K = K;
  s.N = p.N;
  s.H = p.H;
  s.V = p.V;
  s.P = p.P;
  s.TT = p.TT;
  fbh::launch(sgrid, dim3(kScatterThreads), 0, embeddings_scatter_kernel<T>, s);
  fbh::launch(sgrid, dim3(kScatterThreads), 0, embeddings_scatter_combine_kernel<T>, s);
  for (const Buf* b : {&grad_s, &keys, &partials, &sorted, &perm_buf, &ws})
    if (!b->guards_ok()) die("out-of-range write next to an intermediate buffer", 2);
}

template <typename T>
void run_embeddings_backward(Case& c) {
  if (c.str("idtype") == "i32") run_embeddings_backward_typed<T, int32_t>(c);
  else run_embeddings_backward_typed<T, int64_t>(c);
}

template <typename T>
void launch_attention_backward(const AttentionBwdParams<T>& p, int64_t B, int64_t max_seqlen) {
  const int dmax = attention_bwd_dmax(p.d);
  const dim3 grid(unsigned(ceil_div(max_seqlen, attention_bwd_rows(dmax))), unsigned(p.nh), unsigned(B));
  const size_t smem_dq = size_t(attention_bwd_dq_smem_bytes(p.d)), smem_dkdv = size_t(attention_bwd_dkdv_smem_bytes(p.d));
  if (dmax == 64) {
    fbh::launch(grid, dim3(kBwdThreads), smem_dq, attention_bwd_dq_kernel<T, 64>, p);
    fbh::launch(grid, dim3(kBwdThreads), smem_dkdv, attention_bwd_dkdv_kernel<T, 64>, p);
  } else {
    fbh::launch(grid, dim3(kBwdThreads), smem_dq, attention_bwd_dq_kernel<T, 128>, p);
    fbh::launch(grid, dim3(kBwdThreads), smem_dkdv, attention_bwd_dkdv_kernel<T, 128>, p);
  }
}

// attention_backward / attention_masked_backward: inputs qkv, bias (optional), out, grad_out, and lse +
// cu_seqlens (packed) or the additive fp32 mask + its broadcast strides (masked); the workspace is an output
// ("ws") so its guard zones are checked too.
template <typename T>
void run_attention_backward(Case& c, bool masked) {
  AttentionBwdParams<T> p{};
  p.nh = int(c.i("nh"));
  p.H = int(c.i("H"));
  p.d = p.H / p.nh;
  p.scale = float(c.f("scale"));
  p.qkv = c.input<T>("qkv");
  p.bias = c.opt_input<T>("bias");
  p.out = c.input<T>("out");
  p.grad_out = c.input<T>("grad_out");
  p.dropout = make_dropout_params(c.f("dropout_p"), c.i("seed"), c.i("offset"));
  const int64_t B = c.i("B");
  int64_t max_seqlen;
  if (!masked) {
    p.total = c.i("T");
    p.max_seqlen = max_seqlen = c.i("max_seqlen");
    p.cu_seqlens = c.input<int32_t>("cu_seqlens");
    p.lse = c.input<float>("lse");
  } else {
    p.L = c.i("L");
    p.total = B * p.L;
    max_seqlen = p.L;
    p.mask = c.input<float>("mask");
    p.ms_b = c.i("ms_b");
    p.ms_h = c.i("ms_h");
    p.ms_i = c.i("ms_i");
    p.ms_j = c.i("ms_j");
  }
  p.grad_qkv = c.output<T>("grad_qkv", size_t(p.total * 3 * p.H));
  p.ws = c.output<float>("ws", size_t(3 * p.nh * p.total));
  if (p.total == 0 || B == 0 || max_seqlen == 0) return;
  p.vec = p.d % Vec16<T>::n == 0 && aligned(p.qkv) && aligned(p.grad_out) && (!p.bias || aligned(p.bias));
  launch_attention_backward(p, B, max_seqlen);
}

// ---------------------------------------------------------------- planted faults (faults.cuh)

void run_fault(Case& c) {
  const std::string kind = c.str("kind");
  const int64_t blocks = c.i("blocks"), threads = c.i("threads");
  const float* x = c.input<float>("x");
  float* out = c.output<float>("out", size_t(blocks));
  const dim3 g{unsigned(blocks)}, b{unsigned(threads)};
  if (kind == "control") fbh::launch(g, b, 0, fault_control_kernel, x, out);
  else if (kind == "missing_sync") fbh::launch(g, b, 0, fault_missing_sync_kernel, x, out);
  else if (kind == "missing_sync_war") fbh::launch(g, b, 0, fault_missing_sync_war_kernel, x, out);
  else if (kind == "global_oob_write") fbh::launch(g, b, 0, fault_global_oob_write_kernel, x, out);
  else if (kind == "global_oob_read") fbh::launch(g, b, 0, fault_global_oob_read_kernel, x, out);
  else if (kind == "shared_oob") fbh::launch(g, b, 0, fault_shared_oob_kernel, x, out);
  else if (kind == "dynamic_smem_oob") fbh::launch(g, b, size_t(threads) * sizeof(float), fault_dynamic_smem_oob_kernel, x, out);
  else if (kind == "uninit_shared") fbh::launch(g, b, 0, fault_uninit_shared_kernel, x, out);
  else if (kind == "divergent_barrier") fbh::launch(g, b, 0, fault_divergent_barrier_kernel, x, out);
  else if (kind == "shuffle_exited_lane") fbh::launch(g, b, 0, fault_shuffle_exited_lane_kernel, x, out);
  else die("unknown fault kind " + kind);
  c.check_guards();
}

// ---------------------------------------------------------------- main

void run_case(Case& c) {
  const std::string op = c.str("op");
  const std::string dt = c.has("dtype") ? c.str("dtype") : "f32";
  auto dispatch = [&](auto f32, auto f16, auto bf16) {
    if (dt == "f32") f32();
    else if (dt == "f16") f16();
    else if (dt == "bf16") bf16();
    else die("unknown dtype " + dt);
  };
  if (op == "pack") run_pack(c);
  else if (op == "unpack") run_unpack(c);
  else if (op == "fault") run_fault(c);
  else if (op == "bias_act")
    dispatch([&] { run_bias_act<float>(c); }, [&] { run_bias_act<c10::Half>(c); }, [&] { run_bias_act<c10::BFloat16>(c); });
  else if (op == "bias_residual_layernorm")
    dispatch([&] { run_brln<float>(c); }, [&] { run_brln<c10::Half>(c); }, [&] { run_brln<c10::BFloat16>(c); });
  else if (op == "embeddings")
    dispatch([&] { run_embeddings<float>(c); }, [&] { run_embeddings<c10::Half>(c); },
             [&] { run_embeddings<c10::BFloat16>(c); });
  else if (op == "bias_act_backward")
    dispatch([&] { run_bias_act_backward<float>(c); }, [&] { run_bias_act_backward<c10::Half>(c); },
             [&] { run_bias_act_backward<c10::BFloat16>(c); });
  else if (op == "bias_residual_layernorm_backward")
    dispatch([&] { run_brln_backward<float>(c); }, [&] { run_brln_backward<c10::Half>(c); },
             [&] { run_brln_backward<c10::BFloat16>(c); });
  else if (op == "embeddings_backward")
    dispatch([&] { run_embeddings_backward<float>(c); }, [&] { run_embeddings_backward<c10::Half>(c); },
             [&] { run_embeddings_backward<c10::BFloat16>(c); });
  else if (op == "attention" || op == "attention_masked") {
    const bool m = op == "attention_masked";
    dispatch([&] { run_attention<float>(c, m); }, [&] { run_attention<c10::Half>(c, m); },
             [&] { run_attention<c10::BFloat16>(c, m); });
  } else if (op == "attention_backward" || op == "attention_masked_backward") {
    const bool m = op == "attention_masked_backward";
    dispatch([&] { run_attention_backward<float>(c, m); }, [&] { run_attention_backward<c10::Half>(c, m); },
             [&] { run_attention_backward<c10::BFloat16>(c, m); });
  } else die("unknown op " + op);
  c.check_guards();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) die("usage: driver MANIFEST");
  if (const char* t = std::getenv("FBH_TIMEOUT")) alarm(unsigned(std::atoi(t)));  // a hang dies by SIGALRM
  std::ifstream manifest(argv[1]);
  if (!manifest) die(std::string("cannot read ") + argv[1]);
  std::string line;
  while (std::getline(manifest, line)) {
    if (line.empty() || line[0] == '#') continue;
    for (const char* tag : {"fwd", "rev"}) {
      Case c;
      std::istringstream ss(line);
      std::string tok;
      while (ss >> tok) {
        const auto eq = tok.find('=');
        if (eq == std::string::npos) die("bad token " + tok);
        c.kv[tok.substr(0, eq)] = tok.substr(eq + 1);
      }
      c.misalign = c.has("misalign") ? size_t(c.i("misalign")) : 0;
      c.load_inputs();
      fbh::set_order(std::string(tag) == "fwd" ? fbh::Order::Forward : fbh::Order::Reverse);
      std::fprintf(stderr, "case %s %s\n", c.str("out").c_str(), tag);
      run_case(c);
      c.write_outputs(tag);
    }
  }
  return 0;
}
