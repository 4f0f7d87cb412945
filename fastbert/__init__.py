"""fastbert: a padding-free BERT for PyTorch on fused C++/CUDA kernels, a drop-in for transformers' BERT."""
__version__ = "0.1.0"

from . import ops, reference  # noqa: F401
from .encoder import Encoder, EncoderConfig, load_encoder  # noqa: F401  (torch only: keeps `import fastbert` light)
from .int8 import dequantize, is_quantized, quantize  # noqa: F401

# Names that need transformers are imported on first use (PEP 562), so `import fastbert` does not load it.
_LAZY = {
    "BertModel": "modeling",
    "from_hf": "convert",
    "optimize": "convert",
    "restore": "convert",
    "is_optimized": "convert",
    **{name: "heads" for name in (
        "BertForSequenceClassification", "BertForTokenClassification", "BertForQuestionAnswering",
        "BertForMaskedLM", "BertForNextSentencePrediction", "BertForPreTraining", "BertForMultipleChoice")},
}


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'fastbert' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
