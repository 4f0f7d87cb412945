"""transformers' BERT task heads on fastbert's encoder.

Each class subclasses its transformers namesake: same constructor, parameter names, forward signature, losses
and output classes, so head checkpoints load, ``save_pretrained`` writes folders transformers loads, the MLM
decoder is tied to the word embeddings as transformers ties it, and ``Trainer`` works unchanged. Only the
encoder differs: ``self.bert`` is a ``fastbert.BertModel`` (padding-free by default). Extra constructor /
``from_pretrained`` argument: ``pad_outputs`` ("zero" or "hf"; see fastbert.BertModel).

What differs from transformers, and why:
- labels are checked (shape, range) and a bad one raises an error naming the argument, where transformers
  may fail deep inside a loss or, for some values, not at all;
- ``BertForQuestionAnswering`` with ``pad_outputs="zero"`` sets the start/end logits of pad positions to the
  dtype's minimum (pad positions have no hidden state; transformers computes logits there from one);
- ``BertForMaskedLM(config, sparse_prediction=True)`` (and ``BertForPreTraining``'s, with both labels; off by
  default) runs the MLM decoder only on positions
  whose label is not -100 when labels are given: the loss is the same, ``logits`` then has shape
  (number of labelled positions, vocab) instead of (B, L, vocab).
"""

from __future__ import annotations

try:
    from typing import Unpack
except ImportError:  # Python 3.10
    from typing_extensions import Unpack

import torch
from torch import Tensor, nn
from transformers import BertConfig
from transformers.modeling_outputs import (
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    NextSentencePredictorOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.models.bert import modeling_bert as hf
from transformers.utils import TransformersKwargs

from .. import ops
from ..model import check_pad_outputs, validate_config
from .modeling import BertModel

__all__ = [
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertForQuestionAnswering",
    "BertForMaskedLM",
    "BertForNextSentencePrediction",
    "BertForPreTraining",
    "BertForMultipleChoice",
]

IGNORE_INDEX = -100


def _use_fastbert_encoder(head: nn.Module, pad_outputs: str) -> None:
    """Give the head's transformers BertModel fastbert's forward: same modules and parameters, new class."""
    validate_config(head.config)
    head.bert.__class__ = BertModel
    head.bert.pad_outputs = check_pad_outputs(pad_outputs)


def _checking() -> bool:
    return not ops.compiling()


def _check_class_labels(
    name: str, labels: Tensor, n_classes: int, allow_ignore: bool = False, shape: tuple | None = None
) -> None:
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer class indices, got dtype {labels.dtype}")
    if shape is not None and tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(labels.shape)}")
    valid = (labels >= 0) & (labels < n_classes)
    if allow_ignore:
        valid |= labels == IGNORE_INDEX
    if not bool(valid.all()):
        bad = labels[~valid][0].item()
        extra = f" or {IGNORE_INDEX} (ignored)" if allow_ignore else ""
        raise ValueError(f"{name}: value {bad} outside [0, {n_classes}){extra}")


def _batch_and_length(input_ids: Tensor | None, inputs_embeds: Tensor | None) -> tuple[int, int]:
    ref = input_ids if input_ids is not None else inputs_embeds
    if ref is None:
        raise ValueError("input_ids: either input_ids or inputs_embeds must be given")
    return ref.shape[0], ref.shape[1] if ref.dim() > 1 else 1


def _sparse_mlm(predictions: nn.Module, hidden: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(logits, loss) of the MLM decoder run only on the labelled positions: (labelled positions, vocab)."""
    selected = labels.reshape(-1) != IGNORE_INDEX
    logits = predictions(hidden.reshape(-1, hidden.shape[-1])[selected])
    return logits, nn.functional.cross_entropy(logits, labels.reshape(-1)[selected])


class BertForSequenceClassification(hf.BertForSequenceClassification):
    """Sentence or sentence-pair classification / regression (``problem_type`` as in transformers)."""

    def __init__(self, config: BertConfig, pad_outputs: str = "zero"):
        super().__init__(config)
        _use_fastbert_encoder(self, pad_outputs)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[Tensor] | SequenceClassifierOutput:
        if labels is not None and _checking():
            B, _ = _batch_and_length(input_ids, inputs_embeds)
            n = self.num_labels
            problem = self.config.problem_type
            if problem is None:
                problem = (
                    "regression"
                    if n == 1
                    else "single_label_classification"
                    if labels.dtype in (torch.long, torch.int)
                    else "multi_label_classification"
                )
            if problem == "single_label_classification":
                _check_class_labels("labels", labels.reshape(-1), n, shape=(B,))
            elif problem == "regression":
                if labels.numel() != B * n:
                    raise ValueError(
                        f"labels: expected {B * n} regression targets (batch {B} x num_labels {n}), "
                        f"got shape {tuple(labels.shape)}"
                    )
            elif tuple(labels.shape) != (B, n):
                raise ValueError(f"labels: multi-label targets must have shape ({B}, {n}), got {tuple(labels.shape)}")
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            **kwargs,
        )


class BertForTokenClassification(hf.BertForTokenClassification):
    """Token tagging (NER, POS): label pad positions -100, as transformers' data collators do."""

    def __init__(self, config: BertConfig, pad_outputs: str = "zero"):
        super().__init__(config)
        _use_fastbert_encoder(self, pad_outputs)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[Tensor] | TokenClassifierOutput:
        if labels is not None and _checking():
            _check_class_labels(
                "labels", labels, self.num_labels, allow_ignore=True, shape=_batch_and_length(input_ids, inputs_embeds)
            )
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            **kwargs,
        )


class BertForQuestionAnswering(hf.BertForQuestionAnswering):
    """Extractive QA. Positions outside the sequence are ignored in the loss, as transformers ignores them; with
    ``pad_outputs="zero"`` pad positions' logits are the dtype's minimum."""

    def __init__(self, config: BertConfig, pad_outputs: str = "zero"):
        super().__init__(config)
        _use_fastbert_encoder(self, pad_outputs)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        start_positions: Tensor | None = None,
        end_positions: Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[Tensor] | QuestionAnsweringModelOutput:
        B, _ = _batch_and_length(input_ids, inputs_embeds)
        if _checking():
            for name, t in (("start_positions", start_positions), ("end_positions", end_positions)):
                if t is not None and (t.is_floating_point() or t.numel() != B):
                    raise ValueError(
                        f"{name}: expected {B} integer positions, got dtype {t.dtype} shape {tuple(t.shape)}"
                    )
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        logits = self.qa_outputs(outputs[0])
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        if attention_mask is not None and attention_mask.dim() == 2 and self.bert.pad_outputs == "zero":
            pad = attention_mask == 0 if attention_mask.dtype != torch.bool else ~attention_mask
            low = torch.finfo(start_logits.dtype).min
            start_logits = start_logits.masked_fill(pad, low)
            end_logits = end_logits.masked_fill(pad, low)
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.size(1)
            start = start_positions.reshape(-1).clamp(0, ignored)
            end = end_positions.reshape(-1).clamp(0, ignored)
            loss_fct = nn.CrossEntropyLoss(ignore_index=ignored)
            loss = (loss_fct(start_logits, start) + loss_fct(end_logits, end)) / 2
        out = QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        use_dict = return_dict if return_dict is not None else self.config.use_return_dict
        return out if use_dict else out.to_tuple()


class BertForMaskedLM(hf.BertForMaskedLM):
    """Masked-LM pretraining / fine-tuning; the decoder is tied to the word embeddings as in transformers."""

    def __init__(self, config: BertConfig, pad_outputs: str = "zero", sparse_prediction: bool = False):
        super().__init__(config)
        _use_fastbert_encoder(self, pad_outputs)
        self.sparse_prediction = sparse_prediction

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[Tensor] | MaskedLMOutput:
        if labels is not None and _checking():
            _check_class_labels(
                "labels",
                labels,
                self.config.vocab_size,
                allow_ignore=True,
                shape=_batch_and_length(input_ids, inputs_embeds),
            )
        if labels is None or not self.sparse_prediction:
            return super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                encoder_hidden_states=encoder_hidden_states,  # refused by fastbert.BertModel: an encoder only
                encoder_attention_mask=encoder_attention_mask,
                labels=labels,
                return_dict=return_dict,
                **kwargs,
            )
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            return_dict=True,
            **kwargs,
        )
        logits, loss = _sparse_mlm(self.cls, outputs[0], labels)
        out = MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        use_dict = return_dict if return_dict is not None else self.config.use_return_dict
        return out if use_dict else out.to_tuple()


class BertForNextSentencePrediction(hf.BertForNextSentencePrediction):
    """Next-sentence prediction (label 0: B follows A, 1: B is random)."""

    def __init__(self, config: BertConfig, pad_outputs: str = "zero"):
        super().__init__(config)
        _use_fastbert_encoder(self, pad_outputs)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[Tensor] | NextSentencePredictorOutput:
        if labels is not None and _checking():
            B, _ = _batch_and_length(input_ids, inputs_embeds)
            _check_class_labels("labels", labels.reshape(-1), 2, shape=(B,))
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            **kwargs,
        )


class BertForPreTraining(hf.BertForPreTraining):
    """Masked LM + next-sentence prediction, BERT's pretraining objective. ``sparse_prediction=True`` (off by
    default) runs the MLM decoder only on labelled positions when ``labels`` are given, as in
    ``BertForMaskedLM``: the same loss, ``prediction_logits`` of shape (labelled positions, vocab); without
    ``next_sentence_label`` the loss is the MLM loss alone (masked-LM-only pretraining; transformers' class
    returns no loss then)."""

    def __init__(self, config: BertConfig, pad_outputs: str = "zero", sparse_prediction: bool = False):
        super().__init__(config)
        _use_fastbert_encoder(self, pad_outputs)
        self.sparse_prediction = sparse_prediction

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        next_sentence_label: Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[Tensor] | hf.BertForPreTrainingOutput:
        if _checking() and (labels is not None or next_sentence_label is not None):
            shape = _batch_and_length(input_ids, inputs_embeds)
            if labels is not None:
                _check_class_labels("labels", labels, self.config.vocab_size, allow_ignore=True, shape=shape)
            if next_sentence_label is not None:
                _check_class_labels("next_sentence_label", next_sentence_label.reshape(-1), 2, shape=(shape[0],))
        if self.sparse_prediction and labels is not None:
            outputs = self.bert(
                input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                return_dict=True,
                **kwargs,
            )
            logits, mlm_loss = _sparse_mlm(self.cls.predictions, outputs[0], labels)
            nsp_logits = self.cls.seq_relationship(outputs[1])
            loss = mlm_loss
            if next_sentence_label is not None:
                loss = loss + nn.functional.cross_entropy(nsp_logits, next_sentence_label.reshape(-1))
            return hf.BertForPreTrainingOutput(
                loss=loss,
                prediction_logits=logits,
                seq_relationship_logits=nsp_logits,
                hidden_states=outputs.hidden_states,
                attentions=outputs.attentions,
            )
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            next_sentence_label=next_sentence_label,
            **kwargs,
        )


class BertForMultipleChoice(hf.BertForMultipleChoice):
    """Multiple choice: inputs of shape (batch, num_choices, seqlen), labels the index of the right choice."""

    def __init__(self, config: BertConfig, pad_outputs: str = "zero"):
        super().__init__(config)
        _use_fastbert_encoder(self, pad_outputs)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[Tensor] | MultipleChoiceModelOutput:
        if _checking():
            for name, t, rank in (
                ("input_ids", input_ids, 3),
                ("attention_mask", attention_mask, 3),
                ("token_type_ids", token_type_ids, 3),
                ("inputs_embeds", inputs_embeds, 4),
            ):
                if t is not None and t.dim() != rank:
                    raise ValueError(
                        f"{name}: multiple choice expects rank {rank} (batch, num_choices, seqlen"
                        f"{', hidden' if rank == 4 else ''}), got shape {tuple(t.shape)}"
                    )
            if labels is not None:
                ref = input_ids if input_ids is not None else inputs_embeds
                _check_class_labels("labels", labels.reshape(-1), ref.shape[1], shape=(ref.shape[0],))
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            **kwargs,
        )
