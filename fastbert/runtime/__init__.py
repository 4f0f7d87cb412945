"""The eval-mode runtime under the model: the fused layer loop (fastbert.runtime.layers), the weights it derives
and caches beside the modules (fused QKV, packed GEMM weights, casts), the int8 layer loop, CUDA graphs, and
the host memory pool that keeps a job of varied shapes flat (fastbert.runtime.host_pool)."""
