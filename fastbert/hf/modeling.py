"""transformers-compatible BERT classes whose forward runs fastbert's fused encoder (fastbert.model.forward).

``fastbert.BertModel`` subclasses transformers' ``BertModel``: same constructor, module tree, state_dict keys,
``from_pretrained``/``save_pretrained``, output classes; only ``forward`` differs. ``FastBertMixin`` carries that
forward so ``fastbert.optimize`` can give it to an existing transformers model object (fastbert/hf/convert.py).
The other families (fastbert/hf/roberta.py, distilbert.py, electra.py) reuse it: a family differs here only in
its forward signature and output class (``_encode`` and ``_outputs`` are shared), and registers its transformers
base class with ``register_base``. The registry of optimized classes (one subclass per original class) is kept
here, next to the classes.
"""

from __future__ import annotations

try:
    from typing import Unpack
except ImportError:  # Python 3.10
    from typing_extensions import Unpack

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from transformers import BertConfig
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions
from transformers.models.bert import modeling_bert as hf
from transformers.utils import ModelOutput, TransformersKwargs

from ..model import EncoderOutput, FastBertModule, check_pad_outputs, pool, run, validate_config

__all__ = ["FastBertMixin", "BertModel", "optimized_class", "original_class", "register_base", "hf_bases"]


class FastBertMixin(FastBertModule):
    """The fused forward for a module laid out as transformers' BertModel (put first in the bases).

    ``pad_outputs`` (attribute): "zero" (default) runs padding-free and returns zeros at pad positions;
    "hf" computes pad positions as transformers does (padded path, slower)."""

    pad_outputs: str = "zero"

    def __reduce_ex__(self, protocol: int) -> str | tuple[Any, ...]:
        # optimize() makes a subclass of a user's own BertModel subclass on the fly; pickle (torch.save,
        # multiprocessing) can't name it, so the object is pickled as "the optimized class of <its original
        # class>" and rebuilt by _new_optimized (state, parameters and pad_outputs as usual).
        reduced = super().__reduce_ex__(protocol)
        cls = type(self)
        if cls in _NAMED or not isinstance(reduced, tuple) or len(reduced) < 2:
            return reduced
        return (_new_optimized, (original_class(cls),)) + tuple(reduced[2:])

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | int | Sequence[int] | None = None,
        return_dict: bool | None = None,
        head_mask: Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[Tensor] | BaseModelOutputWithPoolingAndCrossAttentions:
        res, return_dict = self._encode(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            inputs_embeds,
            output_attentions,
            output_hidden_states,
            return_dict,
            head_mask=head_mask,
            decoder_use=encoder_hidden_states is not None
            or encoder_attention_mask is not None
            or past_key_values is not None
            or cache is not None,
        )
        out = self._outputs(res)
        return out if return_dict else out.to_tuple()

    def _encode(
        self,
        input_ids: Tensor | None,
        attention_mask: Tensor | None,
        token_type_ids: Tensor | None,
        position_ids: Tensor | None,
        inputs_embeds: Tensor | None,
        output_attentions: bool | None,
        output_hidden_states: bool | int | Sequence[int] | None,
        return_dict: bool | None,
        head_mask: Tensor | None = None,
        decoder_use: bool = False,
    ) -> tuple[EncoderOutput, bool]:
        """The checks and config defaults every family's forward shares, then fastbert's run: (its output,
        return_dict)."""
        config = self.config
        if head_mask is not None:
            raise ValueError(
                "head_mask: not supported by fastbert (transformers 5.x ignores it silently); pass head_mask=None"
            )
        if getattr(config, "is_decoder", False) or decoder_use:
            raise NotImplementedError(
                "fastbert runs a BERT-family model as an encoder only: decoder use (is_decoder, "
                "encoder_hidden_states, cross-attention, cache / past_key_values) is not supported"
            )
        if output_attentions is None:
            output_attentions = bool(getattr(config, "output_attentions", False))
        if output_hidden_states is None:
            output_hidden_states = bool(getattr(config, "output_hidden_states", False))
        if return_dict is None:
            return_dict = getattr(config, "return_dict", True)
        res = run(
            self,
            config,
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            inputs_embeds,
            pad_outputs=self.pad_outputs,
            output_hidden_states=output_hidden_states,
            output_attentions=bool(output_attentions),
        )
        return res, return_dict

    def _outputs(self, res: EncoderOutput) -> ModelOutput:
        """transformers' output class of this family's base model (BERT's and RoBERTa's: with the pooler)."""
        pooler = getattr(self, "pooler", None)
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=res.last_hidden_state,
            pooler_output=pool(pooler, res.last_hidden_state) if pooler is not None else None,
            hidden_states=res.hidden_states,
            attentions=res.attentions,
        )


class BertModel(FastBertMixin, hf.BertModel):
    """transformers' BertModel (same constructor, keys, from_pretrained/save_pretrained) on fastbert's fused,
    padding-free encoder. Extra constructor/from_pretrained argument: ``pad_outputs`` ("zero" or "hf")."""

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True, pad_outputs: str = "zero"):
        validate_config(config)
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        self.pad_outputs = check_pad_outputs(pad_outputs)


_OPTIMIZED: dict[type, type] = {}  # a transformers class -> its subclass running on fastbert
_MIXINS: dict[type, type] = {}  # a family's transformers base model class -> the mixin carrying its forward
_NAMED: set[type] = set()  # fastbert's own named classes (pickled by name)


def register_base(hf_base: type, mixin: type, fast_class: type) -> None:
    """Make a family's transformers base model class (BertModel, RobertaModel, ...) known to optimize /
    restore / from_hf: ``mixin`` gives it fastbert's forward, ``fast_class`` is fastbert's named subclass."""
    _MIXINS[hf_base] = mixin
    _OPTIMIZED[hf_base] = fast_class
    _NAMED.add(fast_class)


def hf_bases() -> tuple[type, ...]:
    """The transformers base model classes fastbert runs (one per model type of the BERT family)."""
    return tuple(_MIXINS)


def _hf_base(cls: type) -> type | None:
    for base in cls.__mro__:
        if base in _MIXINS:
            return base
    return None


def optimized_class(cls: type) -> type:
    """The subclass of cls whose forward is fastbert's (made once per class, then reused)."""
    if issubclass(cls, FastBertMixin):
        return cls
    if cls not in _OPTIMIZED:
        base = _hf_base(cls)
        if base is None:
            raise TypeError(f"{cls.__qualname__}: not a transformers base model of the BERT family")
        _OPTIMIZED[cls] = type(
            cls.__name__, (_MIXINS[base], cls), {"__module__": cls.__module__, "__doc__": cls.__doc__}
        )
    return _OPTIMIZED[cls]


def _new_optimized(original: type) -> nn.Module:
    """An empty instance of original's optimized class: what unpickling an optimized model starts from."""
    cls = optimized_class(original)
    return cls.__new__(cls)


def original_class(cls: type) -> type:
    """The transformers class an optimized class was made from."""
    for base in cls.__mro__:
        if _hf_base(base) is not None and not issubclass(base, FastBertMixin):
            return base
    return hf.BertModel


register_base(hf.BertModel, FastBertMixin, BertModel)
