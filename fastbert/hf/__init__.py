"""transformers' BERT classes on fastbert: ``BertModel`` and the ``BertFor*`` heads (same names, keys and
outputs), and ``from_hf`` / ``optimize`` / ``restore`` for models that already exist. Imports transformers."""

from .convert import from_hf, is_optimized, optimize, restore
from .heads import (
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from .modeling import BertModel, FastBertMixin

__all__ = [
    "BertModel",
    "FastBertMixin",
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
]
