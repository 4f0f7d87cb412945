"""Moving transformers BERT-family models onto fastbert and back: ``from_hf``, ``optimize``, ``restore``.

``optimize(model)`` changes, in place, the class of every transformers base model of the BERT family inside
``model`` (``BertModel``, ``RobertaModel``, ``XLMRobertaModel``, ``CamembertModel``, ``DistilBertModel``,
``ElectraModel``: the model itself, the ``.bert``/``.roberta``/... of a head, the ``auto_model`` of a
sentence-transformers model, ...) to a subclass whose forward is fastbert's fused encoder. Parameters, buffers,
module names and therefore ``state_dict``, ``save_pretrained`` and ``deepcopy`` stay exactly HF's;
``isinstance(m, transformers.BertModel)`` (or its family's class) stays true.
The only extra memory is one cached fused QKV weight per layer (3H x H + 3H values), built on the first
no-grad forward and rebuilt whenever q/k/v change. ``restore`` undoes it.
"""

from __future__ import annotations

import copy

from torch import nn

from ..model import check_pad_outputs, dequantize, validate_config
from ..runtime.weights import clear_fused_cache
from .modeling import FastBertMixin, hf_bases, optimized_class, original_class

__all__ = ["from_hf", "optimize", "restore", "is_optimized"]

# Module types the fused forward reads weights from; a subclass (LoRA, quantized, parametrized) is refused.
_EXACT = {"Linear": nn.Linear, "Embedding": nn.Embedding, "LayerNorm": nn.LayerNorm}


def _foreign_hooks(m: nn.Module) -> list:
    hooks = list(m._forward_hooks.values()) + list(m._forward_pre_hooks.values())
    # transformers' own output-capturing hooks (installed by output_hidden_states) are harmless: we produce
    # hidden states ourselves.
    return [h for h in hooks if getattr(h, "__name__", "") != "output_capturing_hook"]


def _check_replaceable(bert: nn.Module, where: str) -> None:
    try:
        validate_config(bert.config)
    except (NotImplementedError, ValueError) as exc:
        raise type(exc)(f"{where}: cannot optimize: {exc}") from None
    if hasattr(bert, "_hf_hook"):
        raise ValueError(f"{where}: cannot optimize a model dispatched by accelerate (device_map/offload hooks)")
    for name, m in bert.named_modules():
        full = f"{where}.{name}" if name else where
        if name and _foreign_hooks(m):
            raise ValueError(
                f"{full}: cannot optimize: it has forward hooks that fastbert's fused forward would "
                "never call; remove them first"
            )
        if hasattr(m, "_hf_hook"):
            raise ValueError(f"{full}: cannot optimize a module dispatched by accelerate hooks")
        if "lora" in type(m).__name__.lower() or "peft" in type(m).__module__.lower():
            raise TypeError(
                f"{full}: cannot optimize a PEFT/LoRA-wrapped module ({type(m).__qualname__}); "
                "merge the adapters first (merge_and_unload)"
            )
        for kind, exact in _EXACT.items():
            if isinstance(m, exact) and type(m) is not exact:
                raise TypeError(
                    f"{full}: cannot optimize: {type(m).__module__}.{type(m).__qualname__} is a "
                    f"subclass of nn.{kind} (quantized, LoRA or parametrized layers are not supported)"
                )
        for pname, p in m.named_parameters(recurse=False):
            if not p.is_floating_point():
                raise TypeError(f"{full}.{pname}: cannot optimize quantized weights (dtype {p.dtype})")
    if _foreign_hooks(bert):
        raise ValueError(f"{where}: cannot optimize: it has forward hooks; remove them first")


def _berts(model: nn.Module):
    bases = hf_bases()
    return [(name or type(model).__name__, m) for name, m in model.named_modules() if isinstance(m, bases)]


def optimize(model: nn.Module, pad_outputs: str = "zero") -> nn.Module:
    """Make every transformers BertModel (or RobertaModel, XLMRobertaModel, CamembertModel, DistilBertModel,
    ElectraModel) inside ``model`` run on fastbert, in place; returns ``model``.

    Refuses (TypeError/ValueError/NotImplementedError naming the module) decoder configs, PEFT/LoRA-wrapped,
    quantized or parametrized layers, and forward hooks on the parts it replaces."""
    check_pad_outputs(pad_outputs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    berts = _berts(model)
    if not berts:
        raise TypeError(
            f"model: no transformers BertModel (or RobertaModel, XLMRobertaModel, CamembertModel, DistilBertModel, "
            f"ElectraModel) found inside {type(model).__name__}"
        )
    for where, bert in berts:  # check all before changing any
        _check_replaceable(bert, where)
    for _, bert in berts:
        bert.__class__ = optimized_class(type(bert))
        bert.pad_outputs = pad_outputs
    return model


def restore(model: nn.Module) -> nn.Module:
    """Undo ``optimize``: every fastbert-run base model inside ``model`` gets its transformers class back."""
    found = False
    for _, bert in _berts(model):
        if isinstance(bert, FastBertMixin):
            found = True
            bert.__class__ = original_class(type(bert))
            bert.__dict__.pop("pad_outputs", None)
            clear_fused_cache(bert)
            dequantize(bert)
    if not found:
        raise ValueError("model: nothing to restore (no fastbert-optimized BertModel inside)")
    return model


def is_optimized(model: nn.Module) -> bool:
    return any(isinstance(m, FastBertMixin) for _, m in _berts(model))


def from_hf(model: nn.Module, pad_outputs: str = "zero") -> nn.Module:
    """A fastbert copy of an in-memory transformers BERT-family model (a base model or a head model holding one): same
    weights (copied), same type family, running on fastbert. The original is left untouched."""
    if not isinstance(model, nn.Module) or not _berts(model):
        raise TypeError(f"model: expected a transformers BERT model, got {type(model).__name__}")
    for where, bert in _berts(model):
        _check_replaceable(bert, where)
    return optimize(copy.deepcopy(model), pad_outputs=pad_outputs)
