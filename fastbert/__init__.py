"""fastbert: a padding-free BERT for PyTorch on fused C++/CUDA kernels, a drop-in for transformers' BERT."""
__version__ = "0.1.0"

from . import ops, reference  # noqa: F401
