"""The eval-mode runtime under the model: the fused layer loop (fastbert.runtime.layers), the weights it derives
and caches beside the modules (fused QKV, packed GEMM weights, casts), the int8 layer loop, CUDA graphs, and
glibc malloc's settings for jobs of varied shapes (fastbert.runtime.malloc)."""
