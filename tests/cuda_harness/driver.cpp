// The test driver of the CUDA harness: runs fastbert's CUDA kernels (csrc/cuda/*.cuh) on the CPU.
//
//   driver MANIFEST
//
// Each line of MANIFEST is one case, `key=value` tokens: op=<op> dtype=f32|f16|bf16 out=<prefix>, inputs as
// in.<name>=<raw file>, and scalars. The driver loads the inputs and runs the op's kernels as the .cu launcher
// in csrc/cuda/ does, with the params and launch functions of the kernels' .cuh, once with the harness's forward
// thread order and once with the reverse order, and writes every output to <prefix>.<name>.<fwd|rev>.bin.
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
  Buf(size_t n, size_t misalign = 0)
      : mem(n + 2 * kGuard + misalign + (n == 0 ? 1 : 0), 0xFF), bytes(n), off(kGuard + misalign) {}
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

// Runs a launch worked out by a kernel's .cuh, as csrc/cuda/host.h's launch() does on a GPU.
template <typename Kernel, typename... Args>
void run(const Launch<Kernel>& l, const Args&... args) {
  fbh::launch(l.grid, l.block, l.smem, l.kernel, args...);
}

// ---------------------------------------------------------------- the ops, launched as csrc/cuda/*.cu does

void run_pack(Case& c) {
  const int64_t B = c.i("B"), L = c.i("L");
  const bool* keep = c.input<bool>("keep");
  auto counts = std::make_unique<Buf>(size_t(B) * 4);
  int32_t* cu = c.output<int32_t>("cu_seqlens", size_t(B + 1));
  if (B > 0) run(pack_rows_launch(&pack_count_kernel, B), keep, L, counts->as<int32_t>());
  run(pack_scan_launch(), counts->as<int32_t>(), B, cu);
  const int64_t T = cu[B];  // the .cu launcher reads this with a device-to-host copy (a sync)
  int64_t* idx = c.output<int64_t>("indices", size_t(T));
  int64_t* pos = c.output<int64_t>("positions", size_t(T));
  if (T > 0) run(pack_rows_launch(&pack_write_kernel, B), keep, L, cu, idx, pos);
}

void run_unpack(Case& c) {
  const int64_t B = c.i("B"), L = c.i("L"), C = c.i("C"), T = c.i("T"), es = c.i("elem_size");
  const int64_t N = B * L, row_bytes = C * es;
  const void* x = c.input<unsigned char>("x");
  const int64_t* indices = c.input<int64_t>("indices");
  void* out = c.output<unsigned char>("out", size_t(N * row_bytes));
  if (N == 0 || row_bytes == 0) return;
  auto inv = std::make_unique<Buf>(size_t(N) * 4);
  int32_t* iv = inv->as<int32_t>();
  run(unpack_launch(&unpack_fill_kernel, N), iv, N);
  if (T > 0) run(unpack_launch(&unpack_scatter_kernel, T), indices, T, N, iv);
  const UnpackCopyParams p = unpack_copy_params(x, iv, out, N, row_bytes);
  run(unpack_copy_launch(p), p);
  c.check_guards();
}

template <typename T>
void run_bias_act(Case& c) {
  const int64_t C = c.i("C"), numel = c.i("N") * C;
  const auto p = bias_act_params(BiasActParams<T>{.x = c.input<T>("x"),
                                                  .bias = c.input<T>("bias"),
                                                  .out = c.output<T>("out", size_t(numel)),
                                                  .numel = numel,
                                                  .C = C,
                                                  .act = static_cast<Activation>(c.i("act"))});
  if (numel > 0) run(bias_act_launch(p), p);
}

template <typename T>
void run_brln(Case& c) {
  const int64_t N = c.i("N"), H = c.i("H");
  const auto p =
      bias_residual_layernorm_params(BiasResidualLayerNormParams<T>{.x = c.input<T>("x"),
                                                                    .bias = c.opt_input<T>("bias"),
                                                                    .residual = c.input<T>("residual"),
                                                                    .gamma = c.input<T>("gamma"),
                                                                    .beta = c.input<T>("beta"),
                                                                    .out = c.output<T>("out", size_t(N * H)),
                                                                    .mean = c.output<float>("mean", size_t(N)),
                                                                    .rstd = c.output<float>("rstd", size_t(N)),
                                                                    .N = N,
                                                                    .H = H,
                                                                    .eps = float(c.f("eps"))});
  if (N > 0) run(bias_residual_layernorm_launch(p), p);
}

// What embeddings and its backward read from a case: ids, position ids, type ids (optional), the tables (the type
// table optional), gamma, and their sizes.
template <typename T, typename I>
EmbeddingsInputs<T, I> embeddings_case(Case& c) {
  return embeddings_inputs(EmbeddingsInputs<T, I>{.ids = c.input<I>("ids"),
                                                  .pos_ids = c.input<I>("pos_ids"),
                                                  .type_ids = c.opt_input<I>("type_ids"),
                                                  .word = c.input<T>("word"),
                                                  .pos = c.input<T>("pos"),
                                                  .type = c.opt_input<T>("type"),
                                                  .gamma = c.input<T>("gamma"),
                                                  .N = c.i("N"),
                                                  .H = c.i("H"),
                                                  .V = c.i("V"),
                                                  .P = c.i("P"),
                                                  .TT = c.has("TT") ? c.i("TT") : 0});
}

template <typename T, typename I>
void run_embeddings_typed(Case& c) {
  const EmbeddingsInputs<T, I> in = embeddings_case<T, I>(c);
  const auto p = embeddings_params(EmbeddingsParams<T, I>{
      in, c.input<T>("beta"), c.output<T>("out", size_t(in.N * in.H)), c.output<float>("mean", size_t(in.N)),
      c.output<float>("rstd", size_t(in.N)), float(c.f("eps"))});
  if (p.N > 0) run(embeddings_launch(p), p);
}

template <typename T>
void run_embeddings(Case& c) {
  if (c.str("idtype") == "i32") run_embeddings_typed<T, int32_t>(c);
  else run_embeddings_typed<T, int64_t>(c);
}

// What attention and its backward read from a case: qkv, bias (optional), sizes, scale, dropout; packed
// (cu_seqlens, T, max_seqlen) or padded (L, the additive fp32 mask and its broadcast strides).
template <typename T>
AttentionInputs<T> attention_case(Case& c, bool masked) {
  AttentionInputs<T> in{.qkv = c.input<T>("qkv"),
                        .bias = c.opt_input<T>("bias"),
                        .B = c.i("B"),
                        .H = int(c.i("H")),
                        .nh = int(c.i("nh")),
                        .scale = float(c.f("scale")),
                        .dropout = make_dropout_params(c.f("dropout_p"), c.i("seed"), c.i("offset"))};
  if (!masked) {
    in.cu_seqlens = c.input<int32_t>("cu_seqlens");
    in.total = c.i("T");
    in.max_seqlen = c.i("max_seqlen");
  } else {
    in.L = c.i("L");
    in.mask = c.input<float>("mask");
    in.ms_b = c.i("ms_b");
    in.ms_h = c.i("ms_h");
    in.ms_i = c.i("ms_i");
    in.ms_j = c.i("ms_j");
  }
  return attention_inputs(in);
}

template <typename T>
void run_attention(Case& c, bool masked) {
  const bool mma = c.has("impl") && c.str("impl") == "mma";
  if (mma && std::is_same_v<T, float>) die("attention impl=mma takes f16 or bf16");
  const AttentionInputs<T> in = attention_case<T>(c, masked);
  const AttentionParams<T> p{in, c.output<T>("out", size_t(in.total * in.H)),
                             c.output<float>("lse", size_t(in.nh * in.total))};
  if (p.total > 0 && p.B > 0 && p.max_seqlen > 0) run(attention_launch(p, mma), p);
}

// ---------------------------------------------------------------- backward ops

template <typename T>
void run_bias_act_backward(Case& c) {
  const int64_t C = c.i("C"), numel = c.i("N") * C;
  const auto p =
      bias_act_backward_params(BiasActBackwardParams<T>{.grad = c.input<T>("grad"),
                                                        .x = c.input<T>("x"),
                                                        .bias = c.input<T>("bias"),
                                                        .grad_input = c.output<T>("grad_input", size_t(numel)),
                                                        .numel = numel,
                                                        .C = C,
                                                        .act = static_cast<Activation>(c.i("act"))});
  if (numel > 0) run(bias_act_backward_launch(p), p);
}

template <typename T>
void run_brln_backward(Case& c) {
  const int64_t N = c.i("N"), H = c.i("H");
  BrlnBackwardParams<T> in{.grad_out = c.input<T>("grad_out"),
                           .x = c.input<T>("x"),
                           .bias = c.opt_input<T>("bias"),
                           .residual = c.input<T>("residual"),
                           .gamma = c.input<T>("gamma"),
                           .mean = c.input<float>("mean"),
                           .rstd = c.input<float>("rstd"),
                           .grad_s = c.output<T>("grad_s", size_t(N * H)),
                           .N = N,
                           .H = H};
  T* grad_w = c.output<T>("grad_w", size_t(H));
  T* grad_b = c.output<T>("grad_b", size_t(H));
  std::fill(grad_w, grad_w + H, T(0.f));  // the launcher's zeros (the kernels leave them when N == 0)
  std::fill(grad_b, grad_b + H, T(0.f));
  if (N == 0) return;
  const auto rows = brln_backward_launch<T>(N, H, kSmemDefault);  // the harness has 48 KiB of shared memory
  Buf partials(size_t(rows.grid.x) * 2 * size_t(H) * sizeof(float));
  in.partials = partials.as<float>();
  const auto p = brln_backward_params(in);
  run(rows, p);
  run(ln_backward_reduce_launch<T>(H), p.partials, int64_t(rows.grid.x), H, grad_w, grad_b);
  if (!partials.guards_ok()) die("out-of-range write next to the partials", 2);
}

template <typename T, typename I>
void run_embeddings_backward_typed(Case& c) {
  const EmbeddingsInputs<T, I> in = embeddings_case<T, I>(c);
  const int64_t N = in.N, H = in.H, V = in.V, P = in.P, TT = in.TT;
  // The launcher's outputs: zero-filled tables (the type table only when there is one), then the LN gradients.
  T* g_word = c.output<T>("grad_word", size_t(V * H));
  T* g_pos = c.output<T>("grad_pos", size_t(P * H));
  T* g_type = in.type ? c.output<T>("grad_type", size_t(TT * H)) : nullptr;
  T* g_w = c.output<T>("grad_w", size_t(H));
  T* g_b = c.output<T>("grad_b", size_t(H));
  std::fill(g_word, g_word + V * H, T(0.f));
  std::fill(g_pos, g_pos + P * H, T(0.f));
  if (g_type) std::fill(g_type, g_type + TT * H, T(0.f));
  std::fill(g_w, g_w + H, T(0.f));
  std::fill(g_b, g_b + H, T(0.f));
  if (N == 0) return;
  const auto rows = embeddings_backward_rows_launch<T, I>(N, H, kSmemDefault);
  const int64_t K = (in.type ? 3 : 2) * N;
  Buf grad_s(size_t(N * H) * sizeof(float)), keys(size_t(K) * sizeof(int64_t)),
      partials(size_t(rows.grid.x) * 2 * size_t(H) * sizeof(float));
  const auto p = embeddings_backward_params(
      EmbeddingsBackwardParams<T, I>{in, c.input<T>("grad_out"), c.input<float>("mean"), c.input<float>("rstd"),
                                     grad_s.as<float>(), keys.as<int64_t>(), partials.as<float>()});
  run(embeddings_keys_launch<T, I>(N), p);
  run(rows, p);
  run(ln_backward_reduce_launch<T>(H), p.partials, int64_t(rows.grid.x), H, g_w, g_b);

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
  const auto scatter = embeddings_scatter_launch<T>(K, H, /*combine=*/false);
  Buf ws(size_t(scatter.grid.x) * 2 * size_t(H) * sizeof(float));
  const EmbeddingsScatterParams<T> s{.sorted = sorted.as<int64_t>(),
                                     .perm = perm_buf.as<int64_t>(),
                                     .grad_s = grad_s.as<float>(),
                                     .ws = ws.as<float>(),
                                     .word = g_word,
                                     .pos = g_pos,
                                     .type = g_type,
                                     .K = K,
                                     .N = N,
                                     .H = H,
                                     .V = V,
                                     .P = P,
                                     .TT = TT};
  run(scatter, s);
  run(embeddings_scatter_launch<T>(K, H, /*combine=*/true), s);
  for (const Buf* b : {&grad_s, &keys, &partials, &sorted, &perm_buf, &ws})
    if (!b->guards_ok()) die("out-of-range write next to an intermediate buffer", 2);
}

template <typename T>
void run_embeddings_backward(Case& c) {
  if (c.str("idtype") == "i32") run_embeddings_backward_typed<T, int32_t>(c);
  else run_embeddings_backward_typed<T, int64_t>(c);
}

// attention_backward / attention_masked_backward: inputs qkv, bias (optional), out, grad_out, and lse +
// cu_seqlens (packed) or the additive fp32 mask + its broadcast strides (masked); the workspace is an output
// ("ws") so its guard zones are checked too.
template <typename T>
void run_attention_backward(Case& c, bool masked) {
  const AttentionInputs<T> in = attention_case<T>(c, masked);
  const auto p = attention_bwd_params(AttentionBwdParams<T>{
      in, c.input<T>("out"), c.input<T>("grad_out"), c.output<T>("grad_qkv", size_t(in.total * 3 * in.H)),
      masked ? nullptr : c.input<float>("lse"), c.output<float>("ws", size_t(3 * in.nh * in.total))});
  if (p.total == 0 || p.B == 0 || p.max_seqlen == 0) return;
  const auto l = attention_bwd_launches(p);
  run(l.dq, p);
  run(l.dkdv, p);
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
  else if (kind == "dynamic_smem_oob")
    fbh::launch(g, b, size_t(threads) * sizeof(float), fault_dynamic_smem_oob_kernel, x, out);
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
    dispatch([&] { run_bias_act<float>(c); }, [&] { run_bias_act<c10::Half>(c); },
             [&] { run_bias_act<c10::BFloat16>(c); });
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
