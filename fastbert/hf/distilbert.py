"""DistilBERT on fastbert. Its modules (``transformer.layer.N.attention.q_lin``, ``sa_layer_norm``,
``ffn.lin1``, ...) and config fields (``dim``, ``n_heads``, ``activation``, ...) are read through the family
description (fastbert/model/family.py, fastbert/runtime/layout.py); its layers compute what BERT's do. This
module gives it transformers' DistilBertModel forward signature (no token types) and output class (no pooler).
Sinusoidal position embeddings (``sinusoidal_pos_embds``) are transformers' own: they fill the position table,
which the forward reads like any other. Heads are made by ``fastbert_head``."""

from __future__ import annotations

try:
    from typing import Unpack
except ImportError:  # Python 3.10
    from typing_extensions import Unpack

from torch import Tensor
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.distilbert import modeling_distilbert as hf_distilbert
from transformers.utils import ModelOutput, TransformersKwargs

from ..model import EncoderOutput, check_pad_outputs, validate_config
from .family_heads import fastbert_head
from .modeling import FastBertMixin, register_base

__all__ = [
    "DistilBertMixin",
    "DistilBertModel",
    "DistilBertForSequenceClassification",
    "DistilBertForTokenClassification",
    "DistilBertForQuestionAnswering",
    "DistilBertForMaskedLM",
    "DistilBertForMultipleChoice",
]


class DistilBertMixin(FastBertMixin):
    """fastbert's forward for a module laid out as transformers' DistilBertModel."""

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        head_mask: Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[Tensor, ...] | BaseModelOutput:
        res, return_dict = self._encode(
            input_ids,
            attention_mask,
            None,
            position_ids,
            inputs_embeds,
            output_attentions,
            output_hidden_states,
            return_dict,
            head_mask=head_mask,
        )
        out = self._outputs(res)
        return out if return_dict else out.to_tuple()

    def _outputs(self, res: EncoderOutput) -> ModelOutput:
        return BaseModelOutput(
            last_hidden_state=res.last_hidden_state, hidden_states=res.hidden_states, attentions=res.attentions
        )


class DistilBertModel(DistilBertMixin, hf_distilbert.DistilBertModel):
    """transformers' DistilBertModel on fastbert's fused, padding-free encoder (extra argument ``pad_outputs``)."""

    def __init__(self, config: hf_distilbert.DistilBertConfig, pad_outputs: str = "zero"):
        validate_config(config)
        super().__init__(config)
        self.pad_outputs = check_pad_outputs(pad_outputs)


register_base(hf_distilbert.DistilBertModel, DistilBertMixin, DistilBertModel)

DistilBertForSequenceClassification = fastbert_head(hf_distilbert.DistilBertForSequenceClassification, __name__)
DistilBertForTokenClassification = fastbert_head(hf_distilbert.DistilBertForTokenClassification, __name__)
DistilBertForQuestionAnswering = fastbert_head(hf_distilbert.DistilBertForQuestionAnswering, __name__)
DistilBertForMaskedLM = fastbert_head(hf_distilbert.DistilBertForMaskedLM, __name__)
DistilBertForMultipleChoice = fastbert_head(hf_distilbert.DistilBertForMultipleChoice, __name__)
