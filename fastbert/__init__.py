"""fastbert: a padding-free BERT for PyTorch on fused C++/CUDA kernels, a drop-in for transformers' BERT (and
RoBERTa, XLM-RoBERTa, CamemBERT, DistilBERT, ELECTRA).

Layers, top-down (a forward never returns to a layer it left):

    fastbert.hf       transformers' classes on fastbert (BertModel, BertFor*, the other families, optimize/...)
    fastbert.model    config, input checks, module tree, the fused forward, load_encoder, quantize
    fastbert.runtime  the eval-mode layer loop, cached fused/packed weights, int8 loop, CUDA graphs
    fastbert.ops      torch.ops.fastbert's Python face: kernels or the reference, fakes, autograd, GEMM choice

beside them the batch job (fastbert.batch), the benchmark harness (fastbert.bench) and the command line
(fastbert.cli).
"""

__version__ = "0.1.0"

from . import ops
from .model import Encoder, EncoderConfig, dequantize, is_quantized, load_encoder, quantize
from .ops import reference

__all__ = [
    "ops",
    "reference",
    "Encoder",
    "EncoderConfig",
    "load_encoder",
    "quantize",
    "dequantize",
    "is_quantized",
    "BertModel",
    "from_hf",
    "optimize",
    "restore",
    "is_optimized",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertForQuestionAnswering",
    "BertForMaskedLM",
    "BertForNextSentencePrediction",
    "BertForPreTraining",
    "BertForMultipleChoice",
    "RobertaModel",
    "XLMRobertaModel",
    "CamembertModel",
    "RobertaForSequenceClassification",
    "RobertaForTokenClassification",
    "RobertaForQuestionAnswering",
    "RobertaForMaskedLM",
    "RobertaForMultipleChoice",
    "XLMRobertaForSequenceClassification",
    "XLMRobertaForTokenClassification",
    "XLMRobertaForQuestionAnswering",
    "XLMRobertaForMaskedLM",
    "XLMRobertaForMultipleChoice",
    "CamembertForSequenceClassification",
    "CamembertForTokenClassification",
    "CamembertForQuestionAnswering",
    "CamembertForMaskedLM",
    "CamembertForMultipleChoice",
    "DistilBertModel",
    "DistilBertForSequenceClassification",
    "DistilBertForTokenClassification",
    "DistilBertForQuestionAnswering",
    "DistilBertForMaskedLM",
    "DistilBertForMultipleChoice",
    "ElectraModel",
    "ElectraForPreTraining",
    "ElectraForSequenceClassification",
    "ElectraForTokenClassification",
    "ElectraForQuestionAnswering",
    "ElectraForMaskedLM",
    "ElectraForMultipleChoice",
]

# Names that need transformers come from fastbert.hf on first use (PEP 562): `import fastbert` does not load it.
_FROM_HF = frozenset(__all__[8:])


def __getattr__(name: str):
    if name not in _FROM_HF:
        raise AttributeError(f"module 'fastbert' has no attribute {name!r}")
    from . import hf

    value = getattr(hf, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | _FROM_HF)
