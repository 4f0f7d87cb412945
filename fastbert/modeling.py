"""transformers-compatible BERT classes whose forward runs fastbert's fused encoder (fastbert/encoder.py).

``fastbert.BertModel`` subclasses transformers' ``BertModel``: same constructor, module tree, state_dict keys,
``from_pretrained``/``save_pretrained``, output classes; only ``forward`` differs. ``FastBertMixin`` carries that
forward so ``fastbert.optimize`` can give it to an existing transformers model object (see fastbert/convert.py).
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions
from transformers.models.bert import modeling_bert as hf

from .encoder import PAD_OUTPUTS, pool, run, validate_config

__all__ = ["FastBertMixin", "BertModel"]


def check_pad_outputs(pad_outputs: str) -> str:
    if pad_outputs not in PAD_OUTPUTS:
        raise ValueError(f"pad_outputs: expected one of {PAD_OUTPUTS}, got {pad_outputs!r}")
    return pad_outputs


class FastBertMixin:
    """The fused forward for a module laid out as transformers' BertModel (put first in the bases).

    ``pad_outputs`` (attribute): "zero" (default) runs padding-free and returns zeros at pad positions;
    "hf" computes pad positions as transformers does (padded path, slower)."""

    pad_outputs: str = "zero"

    def __reduce_ex__(self, protocol):
        # optimize() makes a subclass of a user's own BertModel subclass on the fly; pickle (torch.save,
        # multiprocessing) can't name it, so the object is pickled as "the optimized class of <its original
        # class>" and rebuilt through fastbert.convert (state, parameters and pad_outputs as usual).
        reduced = super().__reduce_ex__(protocol)
        cls = type(self)
        if cls is BertModel or not isinstance(reduced, tuple) or len(reduced) < 2:
            return reduced
        from .convert import _new_optimized, _original_class
        return (_new_optimized, (_original_class(cls),)) + tuple(reduced[2:])

    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        token_type_ids: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        inputs_embeds: Optional[Tensor] = None,
        encoder_hidden_states: Optional[Tensor] = None,
        encoder_attention_mask: Optional[Tensor] = None,
        past_key_values=None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states=None,
        return_dict: Optional[bool] = None,
        head_mask: Optional[Tensor] = None,
        **kwargs,
    ):
        config = self.config
        if head_mask is not None:
            raise ValueError("head_mask: not supported by fastbert (transformers 5.x ignores it silently); "
                             "pass head_mask=None")
        if getattr(config, "is_decoder", False) or encoder_hidden_states is not None \
                or encoder_attention_mask is not None or past_key_values is not None:
            raise NotImplementedError("fastbert runs BERT as an encoder only: decoder use (is_decoder, "
                                      "encoder_hidden_states, cross-attention, past_key_values) is not supported")
        if output_attentions is None:
            output_attentions = bool(getattr(config, "output_attentions", False))
        if output_hidden_states is None:
            output_hidden_states = bool(getattr(config, "output_hidden_states", False))
        if return_dict is None:
            return_dict = getattr(config, "return_dict", True)
        res = run(self, config, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                  pad_outputs=self.pad_outputs, output_hidden_states=output_hidden_states,
                  output_attentions=bool(output_attentions))
        pooled = pool(self.pooler, res.last_hidden_state) if self.pooler is not None else None
        out = BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=res.last_hidden_state,
            pooler_output=pooled,
            hidden_states=res.hidden_states,
            attentions=res.attentions,
        )
        return out if return_dict else out.to_tuple()


class BertModel(FastBertMixin, hf.BertModel):
    """transformers' BertModel (same constructor, keys, from_pretrained/save_pretrained) on fastbert's fused,
    padding-free encoder. Extra constructor/from_pretrained argument: ``pad_outputs`` ("zero" or "hf")."""

    def __init__(self, config, add_pooling_layer: bool = True, pad_outputs: str = "zero"):
        validate_config(config)
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        self.pad_outputs = check_pad_outputs(pad_outputs)

