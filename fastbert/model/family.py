"""The BERT family as configurations of one packed encoder. BERT, RoBERTa (and XLM-RoBERTa, CamemBERT, which
are RoBERTa under other names), DistilBERT and ELECTRA run the same post-LayerNorm layers; they differ in
where the modules live, what their config fields are called, and how the embeddings are made:

    family      layers             layer names   positions                          token types  after embeddings
    bert        encoder.layer      BERT's        0, 1, ... (or position_ids)        yes          -
    roberta     encoder.layer      BERT's        cumsum(ids != pad) + pad, from ids yes (1 type)  -
    distilbert  transformer.layer  DistilBERT's  0, 1, ...                          no           -
    electra     encoder.layer      BERT's        0, 1, ...                          yes          embeddings_project

A ``Family`` says that, per model type; the forward (fastbert/model/forward.py), the lean module tree and
loader read it, and the per-layer names come from fastbert/runtime/layout.py. ``bert_names(config)`` shows a
config under BertConfig's field names (DistilBERT's ``dim``/``activation``/``dropout``... read as
``hidden_size``/``hidden_act``/``hidden_dropout_prob``), so everything downstream reads one set of names.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..runtime.layout import BERT_LAYER, DISTILBERT_LAYER, LayerLayout

__all__ = ["Family", "FAMILIES", "family_of", "family_for", "bert_names", "roberta_positions", "MODEL_TYPES"]


class Family(NamedTuple):
    """What one family of the BERT family does its own way: where its parts live, how positions and token types
    are made, what its config fields are called."""

    name: str
    model_types: tuple[str, ...]  # config.model_type values this family serves
    prefix: str  # the base model's attribute in transformers' head models (checkpoint key prefix)
    layers: str  # dotted path of the layer list inside the base model
    layer: LayerLayout  # names inside a layer
    positions: str  # "absolute" (0, 1, ...) or "after_padding" (RoBERTa's, from input_ids)
    token_types: bool  # whether the embeddings add a token type table
    packed_position_ids: bool  # position_ids without a mask mark packed sequences (transformers' mask rule)
    projection: str | None  # the Linear between embeddings and layers when the embedding size differs
    renames: dict[str, str]  # BertConfig field -> this family's config field
    fixed: dict[str, Any]  # BertConfig fields this family's config lacks, and their value


BERT = Family(
    name="bert",
    model_types=("bert",),
    prefix="bert",
    layers="encoder.layer",
    layer=BERT_LAYER,
    positions="absolute",
    token_types=True,
    packed_position_ids=True,
    projection=None,
    renames={},
    fixed={},
)
ROBERTA = BERT._replace(
    name="roberta", model_types=("roberta", "xlm-roberta", "camembert"), prefix="roberta", positions="after_padding"
)
DISTILBERT = BERT._replace(
    name="distilbert",
    model_types=("distilbert",),
    prefix="distilbert",
    layers="transformer.layer",
    layer=DISTILBERT_LAYER,
    token_types=False,
    packed_position_ids=False,  # transformers' DistilBertModel builds its mask without position_ids
    renames={
        "hidden_size": "dim",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
        "intermediate_size": "hidden_dim",
        "hidden_act": "activation",
        "hidden_dropout_prob": "dropout",
        "attention_probs_dropout_prob": "attention_dropout",
    },
    fixed={"type_vocab_size": 0, "layer_norm_eps": 1e-12},
)
ELECTRA = BERT._replace(name="electra", model_types=("electra",), prefix="electra", projection="embeddings_project")

FAMILIES = (BERT, ROBERTA, DISTILBERT, ELECTRA)
_BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}
MODEL_TYPES = tuple(_BY_TYPE)


def family_for(model_type: str | None) -> Family:
    """The family of a config.model_type (BERT's for a type it does not name: BERT-named custom configs)."""
    return _BY_TYPE.get(model_type or "bert", BERT)


def family_of(config: Any) -> Family:
    """The family of a config (transformers' or fastbert's EncoderConfig), by its model_type."""
    return family_for(getattr(config, "model_type", None))


class _BertNames:
    """A config read under BertConfig's field names (renamed fields and fixed values from its family); every
    other attribute is the config's own."""

    def __init__(self, config: Any, family: Family):
        self._config, self._family = config, family

    def __getattr__(self, name: str) -> Any:
        fam = self.__dict__["_family"]
        if name in fam.fixed:
            return fam.fixed[name]
        return getattr(self.__dict__["_config"], fam.renames.get(name, name))


def bert_names(config: Any) -> Any:
    """``config`` under BertConfig's field names: the config itself when its family uses them, or when it has
    them already (fastbert's EncoderConfig always does)."""
    fam = family_of(config)
    if not fam.renames or hasattr(config, "hidden_act"):
        return config
    return _BertNames(config, fam)


def roberta_positions(input_ids: Tensor | None, padding_idx: int, shape: tuple[int, int], device: Any) -> Tensor:
    """RoBERTa's position ids (B, L): from input_ids, padding_idx + the count of non-pad tokens so far at each
    non-pad token and padding_idx at pad tokens (transformers' create_position_ids_from_input_ids, decided by
    the ids, not the attention mask); from inputs_embeds, padding_idx + 1, padding_idx + 2, ... on every row."""
    if input_ids is not None:
        mask = input_ids.ne(padding_idx).int()
        return (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + padding_idx
    B, L = shape
    return torch.arange(padding_idx + 1, L + padding_idx + 1, dtype=torch.long, device=device).expand(B, L)
