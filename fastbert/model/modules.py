"""The lean module tree with transformers' names (BertModel's ``embeddings.word_embeddings``,
``encoder.layer.N.attention.self.query``, ..., ``pooler.dense``; or another family's, built from the same
description in fastbert/model/family.py: DistilBERT's ``transformer.layer.N.attention.q_lin``, ELECTRA's
``embeddings_project``), so HF checkpoints load strictly, and ``Encoder``, the torch-only model over it (no
transformers import: batch jobs start fast)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..runtime.layout import LayerLayout, part, qkv_names
from ..runtime.weights import layer_parts
from .config import EncoderConfig, check_pad_outputs, validate_config
from .family import family_of
from .forward import pool, run

__all__ = ["FastBertModule", "Encoder"]


class FastBertModule:
    """Marks a module whose forward is fastbert's ``run`` over an HF-named module tree: ``Encoder`` and the
    transformers classes of fastbert.hf. ``fastbert.quantize`` looks for these inside a model."""


def _embedding(num: int, dim: int, padding_idx: int | None = None) -> nn.Embedding:
    """nn.Embedding(num, dim, padding_idx) with its usual N(0, 1) init, except on the meta device (load_encoder
    builds there and assigns the checkpoint's tables), where normal_ would import PyTorch's Python meta kernels:
    1.2 s of `fastbert encode`'s start-up."""
    weight = torch.empty(num, dim)
    if not weight.is_meta:
        with torch.no_grad():
            nn.init.normal_(weight)
            if padding_idx is not None:
                weight[padding_idx].zero_()
    return nn.Embedding(num, dim, padding_idx=padding_idx, _weight=weight)


def _put(root: nn.Module, path: str, module: nn.Module) -> None:
    """Register module at a dotted path under root, making plain container modules on the way."""
    *parents, name = path.split(".")
    for p in parents:
        if p not in root._modules:
            root.add_module(p, nn.Module())
        root = root._modules[p]
    root.add_module(name, module)


class _Embeddings(nn.Module):
    """word + position (+ token type) tables and the LayerNorm, at the embedding width (ELECTRA's
    embedding_size, else hidden_size); no token type table in a family without one (DistilBERT)."""

    def __init__(self, c: EncoderConfig, token_types: bool):
        super().__init__()
        E = c.embedding_size or c.hidden_size
        self.word_embeddings = _embedding(c.vocab_size, E, padding_idx=c.pad_token_id)
        self.position_embeddings = _embedding(c.max_position_embeddings, E)
        if token_types:
            self.token_type_embeddings = _embedding(c.type_vocab_size, E)
        self.LayerNorm = nn.LayerNorm(E, eps=c.layer_norm_eps)


def _layer(c: EncoderConfig, lay: LayerLayout) -> nn.Module:
    """One layer with the module names of its layout (BERT's or DistilBERT's, fastbert/runtime/layout.py)."""
    H, I_, eps = c.hidden_size, c.intermediate_size, c.layer_norm_eps
    layer = nn.Module()
    for name in lay.qkv:
        _put(layer, f"{lay.attention}.{name}", nn.Linear(H, H))
    _put(layer, lay.attention_output, nn.Linear(H, H))
    _put(layer, lay.attention_norm, nn.LayerNorm(H, eps=eps))
    _put(layer, lay.intermediate, nn.Linear(H, I_))
    _put(layer, lay.output, nn.Linear(I_, H))
    _put(layer, lay.output_norm, nn.LayerNorm(H, eps=eps))
    return layer


class _Pooler(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)


class Encoder(FastBertModule, nn.Module):
    """BERT-family encoder on fastbert's ops with transformers' base-model state_dict keys of its family
    (config.model_type: bert, roberta, xlm-roberta, camembert, distilbert, electra; loads HF weights strictly).

    ``forward`` returns last_hidden_state (B, L, H); ``pool`` the pooler output (B, H). In eval mode without
    gradients it runs the fused inference loop (int8 GEMMs after ``fastbert.quantize``); with gradients, the
    same fused kernels through their registered backward kernels.
    """

    def __init__(self, config: EncoderConfig, add_pooling_layer: bool = True, pad_outputs: str = "zero"):
        super().__init__()
        validate_config(config)
        self.config = config
        self.pad_outputs = check_pad_outputs(pad_outputs)
        fam = family_of(config)
        self.embeddings = _Embeddings(config, fam.token_types)
        if fam.projection is not None and config.embedding_size:  # ELECTRA: embedding_size -> hidden_size
            self.add_module(fam.projection, nn.Linear(config.embedding_size, config.hidden_size))
        _put(self, fam.layers, nn.ModuleList([_layer(config, fam.layer) for _ in range(config.num_hidden_layers)]))
        self.pooler = _Pooler(config) if add_pooling_layer else None
        self.eval()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        return run(
            self, self.config, input_ids, attention_mask, token_type_ids, position_ids, pad_outputs=self.pad_outputs
        ).last_hidden_state

    @property
    def uses_token_types(self) -> bool:
        """Whether token_type_ids change the output: a family with a token type table of more than one row
        (BERT, ELECTRA; not RoBERTa's single type, not DistilBERT)."""
        tt = getattr(self.embeddings, "token_type_embeddings", None)
        return tt is not None and tt.num_embeddings > 1

    def pool(self, last_hidden_state: Tensor) -> Tensor:
        """tanh(dense(last_hidden_state[:, 0])), HF's pooler output (B, H)."""
        if self.pooler is None:
            raise ValueError("pool: this encoder was loaded without pooler weights (add_pooling_layer=False)")
        return pool(self.pooler, last_hidden_state)

    def fuse_qkv_storage_(self) -> Encoder:
        """Make each layer's query/key/value weights (and biases) views of one (3H, H) tensor, so the fused QKV
        GEMM needs no cached copy. Parameters keep their names; load_state_dict copies into the views."""
        with torch.no_grad():
            for layer in part(self, family_of(self.config).layers):
                sa = layer_parts(layer)[0]
                lins = tuple(sa._modules[name] for name in qkv_names(sa))
                for name in ("weight", "bias"):
                    ts = [getattr(m, name) for m in lins]
                    if any(t is None for t in ts):
                        continue
                    fused = torch.cat([t.detach() for t in ts])
                    n = ts[0].shape[0]
                    for i, m in enumerate(lins):
                        setattr(m, name, nn.Parameter(fused[i * n : (i + 1) * n], requires_grad=ts[i].requires_grad))
        return self
