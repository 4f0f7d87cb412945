"""RoBERTa, XLM-RoBERTa and CamemBERT on fastbert: the same module names and forward as BERT
(fastbert/hf/modeling.py's ``FastBertMixin``); the family description (fastbert/model/family.py, model types
roberta, xlm-roberta, camembert) makes the forward count positions from padding_idx + 1 over non-pad tokens of
input_ids, as transformers does. Each base model class subclasses its transformers namesake; the heads are made
by ``fastbert_head``."""

from __future__ import annotations

from transformers.models.camembert import modeling_camembert as hf_camembert
from transformers.models.roberta import modeling_roberta as hf_roberta
from transformers.models.xlm_roberta import modeling_xlm_roberta as hf_xlmr

from ..model import check_pad_outputs, validate_config
from .family_heads import fastbert_head
from .modeling import FastBertMixin, register_base

__all__ = [
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
]


class RobertaModel(FastBertMixin, hf_roberta.RobertaModel):
    """transformers' RobertaModel on fastbert's fused, padding-free encoder (extra argument ``pad_outputs``)."""

    def __init__(self, config: hf_roberta.RobertaConfig, add_pooling_layer: bool = True, pad_outputs: str = "zero"):
        validate_config(config)
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        self.pad_outputs = check_pad_outputs(pad_outputs)


class XLMRobertaModel(FastBertMixin, hf_xlmr.XLMRobertaModel):
    """transformers' XLMRobertaModel on fastbert's fused, padding-free encoder (extra argument ``pad_outputs``)."""

    def __init__(self, config: hf_xlmr.XLMRobertaConfig, add_pooling_layer: bool = True, pad_outputs: str = "zero"):
        validate_config(config)
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        self.pad_outputs = check_pad_outputs(pad_outputs)


class CamembertModel(FastBertMixin, hf_camembert.CamembertModel):
    """transformers' CamembertModel on fastbert's fused, padding-free encoder (extra argument ``pad_outputs``)."""

    def __init__(self, config: hf_camembert.CamembertConfig, add_pooling_layer: bool = True, pad_outputs: str = "zero"):
        validate_config(config)
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        self.pad_outputs = check_pad_outputs(pad_outputs)


register_base(hf_roberta.RobertaModel, FastBertMixin, RobertaModel)
register_base(hf_xlmr.XLMRobertaModel, FastBertMixin, XLMRobertaModel)
register_base(hf_camembert.CamembertModel, FastBertMixin, CamembertModel)

RobertaForSequenceClassification = fastbert_head(hf_roberta.RobertaForSequenceClassification, __name__)
RobertaForTokenClassification = fastbert_head(hf_roberta.RobertaForTokenClassification, __name__)
RobertaForQuestionAnswering = fastbert_head(hf_roberta.RobertaForQuestionAnswering, __name__)
RobertaForMaskedLM = fastbert_head(hf_roberta.RobertaForMaskedLM, __name__)
RobertaForMultipleChoice = fastbert_head(hf_roberta.RobertaForMultipleChoice, __name__)
XLMRobertaForSequenceClassification = fastbert_head(hf_xlmr.XLMRobertaForSequenceClassification, __name__)
XLMRobertaForTokenClassification = fastbert_head(hf_xlmr.XLMRobertaForTokenClassification, __name__)
XLMRobertaForQuestionAnswering = fastbert_head(hf_xlmr.XLMRobertaForQuestionAnswering, __name__)
XLMRobertaForMaskedLM = fastbert_head(hf_xlmr.XLMRobertaForMaskedLM, __name__)
XLMRobertaForMultipleChoice = fastbert_head(hf_xlmr.XLMRobertaForMultipleChoice, __name__)
CamembertForSequenceClassification = fastbert_head(hf_camembert.CamembertForSequenceClassification, __name__)
CamembertForTokenClassification = fastbert_head(hf_camembert.CamembertForTokenClassification, __name__)
CamembertForQuestionAnswering = fastbert_head(hf_camembert.CamembertForQuestionAnswering, __name__)
CamembertForMaskedLM = fastbert_head(hf_camembert.CamembertForMaskedLM, __name__)
CamembertForMultipleChoice = fastbert_head(hf_camembert.CamembertForMultipleChoice, __name__)
