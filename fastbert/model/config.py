"""The encoder's configuration: the BertConfig fields fastbert reads, and the checks a config must pass."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from ..ops import reference
from .family import bert_names, family_for

__all__ = ["EncoderConfig", "validate_config", "PAD_OUTPUTS", "check_pad_outputs"]

# What a forward writes at pad positions: "zero" (padding-free path) or "hf" (computed as transformers does).
PAD_OUTPUTS = ("zero", "hf")


def check_pad_outputs(pad_outputs: str) -> str:
    """pad_outputs, or a ValueError naming the allowed values."""
    if pad_outputs not in PAD_OUTPUTS:
        raise ValueError(f"pad_outputs: expected one of {PAD_OUTPUTS}, got {pad_outputs!r}")
    return pad_outputs


@dataclass
class EncoderConfig:
    """The BertConfig fields the encoder reads (defaults are BertConfig's), for any family of
    fastbert/model/family.py: ``model_type`` picks it; ``from_dict`` reads a family's own field names
    (DistilBERT's ``dim``, ``n_heads``, ``activation``, ...) into these."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    is_decoder: bool = False
    add_cross_attention: bool = False
    position_embedding_type: str = "absolute"
    model_type: str = "bert"
    embedding_size: int | None = None  # ELECTRA's embedding width when it differs from hidden_size
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        validate_config(self)

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        names = {f.name for f in fields(cls)} - {"extra"}
        fam = family_for(d.get("model_type"))
        d = dict(fam.fixed, **d)
        for bert_name, own in fam.renames.items():
            if own in d and bert_name not in d:
                d[bert_name] = d.pop(own)
        if d.get("embedding_size") == d.get("hidden_size", cls.hidden_size):
            d["embedding_size"] = None
        return cls(**{k: v for k, v in d.items() if k in names}, extra={k: v for k, v in d.items() if k not in names})

    @classmethod
    def from_json(cls, path: str) -> EncoderConfig:
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no config.json in the model folder") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a valid JSON config ({exc})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_dict(d)


def validate_config(config: Any) -> None:
    """ValueError/NotImplementedError for configs the fused encoder cannot run (names the field). ``config``:
    transformers' config of any family in fastbert/model/family.py, or an EncoderConfig."""
    config = bert_names(config)
    H, nh = config.hidden_size, config.num_attention_heads
    if not isinstance(nh, int) or nh <= 0:
        raise ValueError(f"num_attention_heads: expected a positive integer, got {nh!r}")
    if not isinstance(H, int) or H <= 0 or H % nh != 0:
        raise ValueError(f"hidden_size: expected a positive multiple of num_attention_heads={nh}, got {H!r}")
    for name in ("is_decoder", "add_cross_attention"):
        if getattr(config, name, False):
            raise NotImplementedError(
                f"{name}: fastbert runs a BERT-family model as an encoder only: is_decoder/add_cross_attention are not "
                "supported (use transformers' own model for decoder use)"
            )
    pet = getattr(config, "position_embedding_type", "absolute")
    if pet not in (None, "absolute"):
        raise NotImplementedError(
            f"position_embedding_type: only 'absolute' is supported, got {pet!r} (relative position embeddings "
            "run in transformers' own model)"
        )
    es = getattr(config, "embedding_size", None)
    if es is not None and (not isinstance(es, int) or es <= 0):
        raise ValueError(f"embedding_size: expected a positive integer, got {es!r}")
    act = config.hidden_act
    if isinstance(config, EncoderConfig) and act not in reference.ACTIVATIONS:
        raise ValueError(f"hidden_act: expected one of {sorted(reference.ACTIVATIONS)}, got {act!r}")
