"""transformers' task heads of the BERT family on fastbert's encoder, made by one function: ``fastbert_head``
subclasses a transformers head class and, after its own constructor, gives the base model inside
(``self.roberta``, ``self.distilbert``, ``self.electra``) fastbert's forward. Everything else is the transformers
class's own: constructor, parameters, forward, losses, output classes, weight tying, from_pretrained and
save_pretrained. Extra constructor / ``from_pretrained`` argument: ``pad_outputs`` ("zero" or "hf").

With ``pad_outputs="zero"`` the encoder's pad positions are zero, so a head's outputs at pad positions (token
logits, QA logits) are the head applied to zeros; at real positions they are transformers' numbers.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from ..model import check_pad_outputs, validate_config
from .modeling import optimized_class

__all__ = ["fastbert_head"]


def fastbert_head(hf_head: type, module: str) -> type:
    """The subclass of transformers' head class ``hf_head`` (same name) whose base model runs on fastbert,
    defined as if in ``module``."""
    prefix = hf_head.base_model_prefix

    def __init__(self: Any, config: PretrainedConfig, *args: Any, pad_outputs: str = "zero", **kwargs: Any) -> None:
        validate_config(config)
        check_pad_outputs(pad_outputs)
        hf_head.__init__(self, config, *args, **kwargs)
        base = getattr(self, prefix)
        base.__class__ = optimized_class(type(base))
        base.pad_outputs = pad_outputs

    name = hf_head.__name__
    doc = f'transformers\' {name} on fastbert\'s fused, padding-free encoder (``pad_outputs``: "zero" or "hf").'
    return type(name, (hf_head,), {"__init__": __init__, "__module__": module, "__qualname__": name, "__doc__": doc})
