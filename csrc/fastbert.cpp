// fastbert._C: every op schema, in one TORCH_LIBRARY block, plus the small Python module that carries it.
//
// Layouts (T = real tokens of a packed batch, H = hidden, nh = heads, d = H / nh, I = intermediate):
//   qkv      (T, 3H)  the fused QKV GEMM output, [q | k | v], head h at columns h*d .. h*d+d of each third
//   cu_seqlens (B+1,) int32, sequence b owns packed rows cu_seqlens[b] .. cu_seqlens[b+1]
//   lse      (nh, T) float32, log-sum-exp of each softmax row (for the backward), -inf for an empty row
// Every op has a CPU kernel (csrc/cpu/<op>.cpp), a CUDA kernel (csrc/cuda/<op>.cu) unless fastbert.ops lists
// it in CPU_ONLY_OPS (the int8 ops), a fake implementation and a plain-PyTorch reference (fastbert.ops,
// fastbert.ops.reference).
#include <Python.h>
#include <torch/library.h>

#include "cpu/isa.h"
#include "host_pool.h"

TORCH_LIBRARY(fastbert, m) {
  // Real tokens of a (B, L) batch by its mask (nonzero = keep): flat indices b*L+l (int64, row-major order),
  // cu_seqlens (B+1, int32) and each token's position in its row (int64).
  m.def("pack(Tensor attention_mask) -> (Tensor indices, Tensor cu_seqlens, Tensor positions)");
  // Scatter packed rows (T, H) back to (batch, seqlen, H); positions not in indices are zero.
  m.def("unpack(Tensor x, Tensor indices, int batch, int seqlen) -> Tensor");
  // LayerNorm(word[ids] + position[pos] + token_type[type]) for ids of any shape -> ids.shape + (H,),
  // with the fp32 LayerNorm statistics (mean, rstd) of each row.
  m.def(
      "embeddings(Tensor input_ids, Tensor position_ids, Tensor? token_type_ids, Tensor word_weight, "
      "Tensor position_weight, Tensor? token_type_weight, Tensor ln_weight, Tensor ln_bias, float eps) "
      "-> (Tensor out, Tensor mean, Tensor rstd)");
  // softmax(Q K^T * scale) V per sequence of a ragged packed batch, from the fused QKV output plus its bias.
  // max_seqlen bounds the sequence lengths. Dropout on the probabilities when dropout_p > 0, its mask a
  // pure function of (seed, offset, head, query row, key index); see fastbert.ops.reference.
  m.def(
      "attention(Tensor qkv, Tensor? qkv_bias, Tensor cu_seqlens, int max_seqlen, int num_heads, float scale, "
      "float dropout_p=0., int seed=0, int offset=0) -> (Tensor out, Tensor lse)");
  // The padded variant for explicit masks: qkv (B, L, 3H), mask broadcastable to (B, nh, L, L), bool
  // (True = keep) or additive float. out (B, L, H), lse (B, nh, L).
  m.def(
      "attention_masked(Tensor qkv, Tensor? qkv_bias, Tensor mask, int num_heads, float scale, "
      "float dropout_p=0., int seed=0, int offset=0) -> (Tensor out, Tensor lse)");
  // act(x + bias) over the last dim; activation is one of fastbert.reference.ACTIVATIONS.
  m.def("bias_act(Tensor x, Tensor bias, str activation) -> Tensor");
  // LayerNorm(x + bias + residual) over the last dim, fp32 statistics returned as (mean, rstd).
  m.def(
      "bias_residual_layernorm(Tensor x, Tensor? bias, Tensor residual, Tensor ln_weight, Tensor ln_bias, "
      "float eps) -> (Tensor out, Tensor mean, Tensor rstd)");
  // ---- int8 inference (CPU only): the ops around torch._int_mm(x_q (T, K) int8, w_q (K, N) int8) -> int32 (T, N),
  // with per-output-channel weight scales w_scale (N,) float32 and dynamic per-row activation scales (T,) float32.
  // A row v = x * smooth is quantized as q = round_half_even(clamp((v - shift) / scale, -127, 127)): symmetric,
  // shift = 0 and scale = max|v| / 127; asymmetric, shift = (max v + min v) / 2 and scale = (max v - min v) / 254
  // (scales floored at FLT_MIN; 1 for a zero-range row). smooth (K,) float32 is an optional per-input-channel
  // multiplier (SmoothQuant: the caller folds 1 / smooth into the weight's columns). A GEMM over shifted rows is
  // dequantized with x_shift (the rows' shift) and w_sum (N,) (the dequantized weight's column sums):
  // acc * x_scale[t] * w_scale[n] + x_shift[t] * w_sum[n]. fastbert.ops.reference is the specification.
  // x (T, K) float32/bfloat16 -> q int8 (T, K), scale float32 (T,), shift float32 (T,) (asymmetric) or (0,).
  m.def("quantize_rows(Tensor x, Tensor? smooth, bool asymmetric=False) -> (Tensor q, Tensor scale, Tensor shift)");
  // attention (no dropout, no lse) whose output rows (T, H) come quantized: q, scale, shift = quantize_rows(out,
  // smooth (H,), asymmetric) of the out attention would return, computed without writing it.
  m.def(
      "attention_quant(Tensor qkv, Tensor? qkv_bias, Tensor cu_seqlens, int max_seqlen, int num_heads, float scale, "
      "Tensor? smooth, bool asymmetric=False) -> (Tensor q, Tensor scale, Tensor shift)");
  // acc int32 (T, N) -> acc * x_scale[t] * w_scale[n] (+ x_shift[t] * w_sum[n]) in dtype (float32 or bfloat16).
  m.def(
      "dequantize_rows(Tensor acc, Tensor x_scale, Tensor w_scale, ScalarType dtype, Tensor? x_shift=None, "
      "Tensor? w_sum=None) -> Tensor");
  // The FFN's middle: h = act(dequantized acc + bias[n]) in fp32 (bias float32 or bfloat16 (N,)), returned
  // quantized per row (with smooth (N,), asymmetric on request) for the FFN's second GEMM: q, scale, shift.
  m.def(
      "dequant_bias_act_quant(Tensor acc, Tensor x_scale, Tensor w_scale, Tensor bias, str activation, "
      "Tensor? smooth, Tensor? x_shift=None, Tensor? w_sum=None, bool asymmetric=False) "
      "-> (Tensor q, Tensor scale, Tensor shift)");
  // out = LayerNorm(dequantized acc + bias + residual) * weight + beta in residual's dtype (float32 or bfloat16;
  // bias, weight, beta (N,) of that dtype), fp32 statistics. With quantize, also q, scale, shift =
  // quantize_rows(out, smooth, asymmetric); without, they are empty (0,) tensors and smooth is unused.
  m.def(
      "dequant_bias_residual_layernorm(Tensor acc, Tensor x_scale, Tensor w_scale, Tensor? bias, Tensor residual, "
      "Tensor weight, Tensor beta, float eps, bool quantize, Tensor? smooth, Tensor? x_shift=None, "
      "Tensor? w_sum=None, bool asymmetric=False) -> (Tensor out, Tensor q, Tensor scale, Tensor shift)");
  // Inference through every BERT layer (csrc/inference.cpp): x (T, H) packed, weights 12 per layer in the order
  // qkv weight (3H, H), qkv bias?, attention output weight, its bias?, LayerNorm weight, bias, intermediate
  // weight, bias, output weight, its bias?, LayerNorm weight, bias; eps 2 per layer. Returns [last layer's
  // output], or every layer's with all_layers. onednn: float32 CPU GEMMs through oneDNN (fastbert.ops.gemm).
  m.def(
      "encoder_layers(Tensor x, Tensor cu_seqlens, int max_seqlen, int num_heads, float scale, str activation, "
      "Tensor?[] weights, float[] eps, bool all_layers=False, bool onednn=False) -> Tensor[]");

  // ---- backward ops (called by the forward ops' autograd formulas in csrc/autograd.cpp) ----
  // bias_act: grad_input = grad * act'(x + bias), the gradient of x and of the broadcast bias (x's shape).
  m.def("bias_act_backward(Tensor grad, Tensor x, Tensor bias, str activation) -> Tensor");
  // bias_residual_layernorm: recomputes s = x + bias + residual and uses the forward's (mean, rstd).
  // grad_s (x's shape) is the gradient of x, of residual and (summed over rows) of bias; grad_ln_weight and
  // grad_ln_bias (H,) are reduced over rows deterministically.
  m.def(
      "bias_residual_layernorm_backward(Tensor grad_out, Tensor x, Tensor? bias, Tensor residual, "
      "Tensor ln_weight, Tensor mean, Tensor rstd) -> (Tensor grad_s, Tensor grad_ln_weight, Tensor grad_ln_bias)");
  // embeddings: LayerNorm backward on the recomputed gathered sum, then the tables' gradients (dense, the
  // tables' shapes) by a deterministic scatter-add. No padding_idx: the caller zeroes that row if it wants.
  // grad_token_type is (0, H) when token_type_weight is None.
  m.def(
      "embeddings_backward(Tensor grad_out, Tensor input_ids, Tensor position_ids, Tensor? token_type_ids, "
      "Tensor word_weight, Tensor position_weight, Tensor? token_type_weight, Tensor ln_weight, Tensor mean, "
      "Tensor rstd) -> (Tensor grad_word, Tensor grad_position, Tensor grad_token_type, Tensor grad_ln_weight, "
      "Tensor grad_ln_bias)");
  // attention: grad_qkv (T, 3H), the gradient of qkv and (summed over rows) of qkv_bias. Recomputes the
  // probabilities from the saved lse and regenerates the dropout mask from (seed, offset).
  m.def(
      "attention_backward(Tensor grad_out, Tensor qkv, Tensor? qkv_bias, Tensor out, Tensor lse, "
      "Tensor cu_seqlens, int max_seqlen, int num_heads, float scale, float dropout_p=0., int seed=0, "
      "int offset=0) -> Tensor");
  // attention_masked: grad_qkv (B, L, 3H), as attention_backward for the padded, explicitly masked variant.
  m.def(
      "attention_masked_backward(Tensor grad_out, Tensor qkv, Tensor? qkv_bias, Tensor mask, Tensor out, "
      "Tensor lse, int num_heads, float scale, float dropout_p=0., int seed=0, int offset=0) -> Tensor");
}

// ---- the Python module: build facts and the CPU instruction-set switch ----

static PyObject* py_cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(fastbert::cpu::isa_name(fastbert::cpu::active_isa()));
}

static PyObject* py_set_cpu_isa(PyObject*, PyObject* arg) {
  const char* name = PyUnicode_AsUTF8(arg);
  if (name == nullptr) return nullptr;
  try {
    fastbert::cpu::set_active_isa(fastbert::cpu::parse_isa(name));
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}

static PyObject* py_supported_cpu_isas(PyObject*, PyObject*) {
  PyObject* list = PyList_New(0);
  for (auto isa : fastbert::cpu::supported_isas()) {
    PyObject* s = PyUnicode_FromString(fastbert::cpu::isa_name(isa));
    PyList_Append(list, s);
    Py_DECREF(s);
  }
  return list;
}

static PyObject* py_cpu_bf16_dot(PyObject*, PyObject*) { return PyBool_FromLong(fastbert::cpu::bf16_dot_enabled()); }

static PyObject* py_set_cpu_bf16_dot(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  try {
    fastbert::cpu::set_bf16_dot(on != 0);
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}

static PyObject* py_cpu_bf16_dot_supported(PyObject*, PyObject*) {
  return PyBool_FromLong(fastbert::cpu::bf16_dot_supported());
}

static PyObject* py_cuda_archs(PyObject*, PyObject*) {
#ifdef FASTBERT_CUDA_ARCHS
  return PyUnicode_FromString(FASTBERT_CUDA_ARCHS);
#else
  Py_RETURN_NONE;
#endif
}

static PyObject* py_host_pool_scope(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  return PyBool_FromLong(fastbert::host_pool::set_scope(on != 0));
}

static PyObject* py_host_pool_route_backward(PyObject*, PyObject*) {
  fastbert::host_pool::route_backward();
  Py_RETURN_NONE;
}

static PyObject* py_host_pool_stats(PyObject*, PyObject*) {
  const auto s = fastbert::host_pool::stats();
  return Py_BuildValue("{s:O,s:n,s:n,s:n}", "active", fastbert::host_pool::active() ? Py_True : Py_False, "mapped",
                       static_cast<Py_ssize_t>(s.mapped), "allocated", static_cast<Py_ssize_t>(s.allocated), "segments",
                       static_cast<Py_ssize_t>(s.segments));
}

static PyObject* py_host_pool_release(PyObject*, PyObject*) {
  PyThreadState* state = PyEval_SaveThread();  // the pool's lock may be held by a thread that needs the GIL
  const size_t unmapped = fastbert::host_pool::release();
  PyEval_RestoreThread(state);
  return PyLong_FromSize_t(unmapped);
}

static PyMethodDef methods[] = {
    {"cpu_isa", py_cpu_isa, METH_NOARGS, "The CPU instruction set the kernels run now."},
    {"set_cpu_isa", py_set_cpu_isa, METH_O, "Choose the CPU kernels' instruction set: avx512, avx2 or scalar."},
    {"supported_cpu_isas", py_supported_cpu_isas, METH_NOARGS, "Instruction sets this processor runs."},
    {"cpu_bf16_dot", py_cpu_bf16_dot, METH_NOARGS,
     "Whether bfloat16 attention on AVX-512 uses the AVX512-BF16 dot-product kernels now."},
    {"set_cpu_bf16_dot", py_set_cpu_bf16_dot, METH_O,
     "Turn the AVX512-BF16 dot-product attention kernels on or off (on needs avx512_bf16)."},
    {"cpu_bf16_dot_supported", py_cpu_bf16_dot_supported, METH_NOARGS,
     "Whether this processor has avx512_bf16 (the dot-product attention kernels)."},
    {"host_pool_scope", py_host_pool_scope, METH_O,
     "Send this thread's CPU allocations of pool size to fastbert's host pool (True) or not; returns the previous."},
    {"host_pool_route_backward", py_host_pool_route_backward, METH_NOARGS,
     "Route this thread's pool-size CPU allocations to the host pool for the rest of the backward pass it runs."},
    {"host_pool_stats", py_host_pool_stats, METH_NOARGS, "The host pool: active, mapped, allocated (bytes), segments."},
    {"host_pool_release", py_host_pool_release, METH_NOARGS,
     "Unmap the host pool's wholly free segments; returns the bytes unmapped."},
    {"cuda_archs", py_cuda_archs, METH_NOARGS, "CUDA archs compiled in, or None for a CPU-only build."},
    {nullptr, nullptr, 0, nullptr}};

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastbert's compiled kernels", -1, methods};
  return PyModule_Create(&module);
}
