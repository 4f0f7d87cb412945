"""Where a transformer layer keeps its parts, per module-naming scheme: BERT's (also RoBERTa's, XLM-RoBERTa's,
CamemBERT's and ELECTRA's: ``attention.self.query``, ..., ``output.LayerNorm``) and DistilBERT's
(``attention.q_lin``, ..., ``output_layer_norm``). The arithmetic of a layer is the same in every family (one
post-LayerNorm block); only the names differ, so every reader of a layer (the per-layer forward, the inference
loop, the int8 loop, the weight caches) asks this table, never a name of its own.

A layer's layout is recognised by its children (a DistilBERT block has ``ffn``, a BERT layer ``intermediate``):
one dict look-up, and a layer object names its own layout wherever it travels. fastbert.model.family ties each
layout to its model types.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

__all__ = ["LayerLayout", "BERT_LAYER", "DISTILBERT_LAYER", "LAYOUTS", "layout_of", "qkv_names", "part", "parts"]


class LayerLayout(NamedTuple):
    """Dotted paths, inside a layer, of the modules a forward reads."""

    attention: str  # the module holding the three projections
    qkv: tuple[str, str, str]  # their names inside it
    attention_output: str  # Linear after attention
    attention_norm: str  # LayerNorm after it (residual: the layer input)
    intermediate: str  # first FFN Linear
    output: str  # second FFN Linear
    output_norm: str  # LayerNorm after it (residual: the attention block's output)
    activation: str  # the FFN activation module or function (transformers' own), for activations without a kernel
    attention_dropout: bool  # whether the attention block drops out its output (training); DistilBERT does not
    marker: str  # a child name only this layout has


BERT_LAYER = LayerLayout(
    attention="attention.self",
    qkv=("query", "key", "value"),
    attention_output="attention.output.dense",
    attention_norm="attention.output.LayerNorm",
    intermediate="intermediate.dense",
    output="output.dense",
    output_norm="output.LayerNorm",
    activation="intermediate.intermediate_act_fn",
    attention_dropout=True,
    marker="intermediate",
)

DISTILBERT_LAYER = LayerLayout(
    attention="attention",
    qkv=("q_lin", "k_lin", "v_lin"),
    attention_output="attention.out_lin",
    attention_norm="sa_layer_norm",
    intermediate="ffn.lin1",
    output="ffn.lin2",
    output_norm="output_layer_norm",
    activation="ffn.activation",
    attention_dropout=False,
    marker="ffn",
)

LAYOUTS = (BERT_LAYER, DISTILBERT_LAYER)


def layout_of(layer: nn.Module) -> LayerLayout:
    """The layout of ``layer`` (BERT's unless the layer has DistilBERT's children; a wrapper that forwards
    attributes, such as an activation-checkpoint wrapper, is looked through)."""
    mods = layer._modules
    if DISTILBERT_LAYER.marker in mods:
        return DISTILBERT_LAYER
    if BERT_LAYER.marker in mods or not hasattr(layer, DISTILBERT_LAYER.marker):
        return BERT_LAYER
    return DISTILBERT_LAYER


def part(module: nn.Module, path: str) -> nn.Module:
    """module's submodule at a dotted path, through the modules' dicts (KeyError when absent)."""
    for name in path.split("."):
        module = module._modules[name]
    return module


def _split(layout: LayerLayout) -> tuple[tuple[str, ...], ...]:
    paths = (
        layout.attention,
        layout.attention_output,
        layout.attention_norm,
        layout.intermediate,
        layout.output,
        layout.output_norm,
    )
    return tuple(tuple(p.split(".")) for p in paths)


_PARTS = {layout: _split(layout) for layout in LAYOUTS}  # the six paths of each layout, split once


def parts(layer: nn.Module) -> tuple[nn.Module, ...]:
    """The six modules a forward reads from a layer of any layout: (the module holding q/k/v, attention
    output Linear, its LayerNorm, intermediate Linear, output Linear, its LayerNorm). Through the modules'
    dicts, afresh on every call (a replaced module is never stale); by attribute through a wrapper that
    forwards them (AttributeError when a part is absent)."""
    paths = _PARTS[layout_of(layer)]
    out = []
    try:
        for names in paths:
            m = layer
            for name in names:
                m = m._modules[name]
            out.append(m)
    except KeyError:  # a wrapper that forwards attributes: by attribute (AttributeError when truly absent)
        out = []
        for names in paths:
            m = layer
            for name in names:
                m = getattr(m, name)
            out.append(m)
    return tuple(out)


def qkv_names(attention: nn.Module) -> tuple[str, str, str]:
    """The names of the query/key/value Linears inside an attention module of any layout."""
    for layout in LAYOUTS:
        if layout.qkv[0] in attention._modules:
            return layout.qkv
    return BERT_LAYER.qkv
