"""ELECTRA on fastbert: BERT's layer names and forward signature (fastbert/hf/modeling.py's ``FastBertMixin``);
the family description (fastbert/model/family.py) adds the ``embeddings_project`` Linear (embedding_size ->
hidden_size) between the embeddings and the layers when the two sizes differ. No pooler: the output class is
transformers' ElectraModel's. Heads (the discriminator ``ElectraForPreTraining`` among them) are made by
``fastbert_head``."""

from __future__ import annotations

from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions
from transformers.models.electra import modeling_electra as hf_electra
from transformers.utils import ModelOutput

from ..model import EncoderOutput, check_pad_outputs, validate_config
from .family_heads import fastbert_head
from .modeling import FastBertMixin, register_base

__all__ = [
    "ElectraMixin",
    "ElectraModel",
    "ElectraForPreTraining",
    "ElectraForSequenceClassification",
    "ElectraForTokenClassification",
    "ElectraForQuestionAnswering",
    "ElectraForMaskedLM",
    "ElectraForMultipleChoice",
]


class ElectraMixin(FastBertMixin):
    """fastbert's forward for a module laid out as transformers' ElectraModel."""

    def _outputs(self, res: EncoderOutput) -> ModelOutput:
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=res.last_hidden_state, hidden_states=res.hidden_states, attentions=res.attentions
        )


class ElectraModel(ElectraMixin, hf_electra.ElectraModel):
    """transformers' ElectraModel on fastbert's fused, padding-free encoder (extra argument ``pad_outputs``)."""

    def __init__(self, config: hf_electra.ElectraConfig, pad_outputs: str = "zero"):
        validate_config(config)
        super().__init__(config)
        self.pad_outputs = check_pad_outputs(pad_outputs)


register_base(hf_electra.ElectraModel, ElectraMixin, ElectraModel)

ElectraForPreTraining = fastbert_head(hf_electra.ElectraForPreTraining, __name__)
ElectraForSequenceClassification = fastbert_head(hf_electra.ElectraForSequenceClassification, __name__)
ElectraForTokenClassification = fastbert_head(hf_electra.ElectraForTokenClassification, __name__)
ElectraForQuestionAnswering = fastbert_head(hf_electra.ElectraForQuestionAnswering, __name__)
ElectraForMaskedLM = fastbert_head(hf_electra.ElectraForMaskedLM, __name__)
ElectraForMultipleChoice = fastbert_head(hf_electra.ElectraForMultipleChoice, __name__)
