"""The lean module tree with transformers' BertModel names (``embeddings.word_embeddings``,
``encoder.layer.N.attention.self.query``, ..., ``pooler.dense``), so HF checkpoints load strictly, and
``Encoder``, the torch-only model over it (no transformers import: batch jobs start fast)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import EncoderConfig, check_pad_outputs, validate_config
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


class _Embeddings(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.word_embeddings = _embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = _embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = _embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)


class _SelfAttention(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)


class _DenseLN(nn.Module):
    def __init__(self, c: EncoderConfig, n_in: int):
        super().__init__()
        self.dense = nn.Linear(n_in, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)


class _Attention(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _DenseLN(c, c.hidden_size)


class _Intermediate(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)


class _Layer(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _DenseLN(c, c.intermediate_size)


class _Stack(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.layer = nn.ModuleList([_Layer(c) for _ in range(c.num_hidden_layers)])


class _Pooler(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)


class Encoder(FastBertModule, nn.Module):
    """BERT encoder on fastbert's ops with transformers' BertModel state_dict keys (loads HF weights strictly).

    ``forward`` returns last_hidden_state (B, L, H); ``pool`` the pooler output (B, H). In eval mode without
    gradients it runs the fused inference loop (int8 GEMMs after ``fastbert.quantize``); with gradients, the
    same fused kernels through their registered backward kernels.
    """

    def __init__(self, config: EncoderConfig, add_pooling_layer: bool = True, pad_outputs: str = "zero"):
        super().__init__()
        validate_config(config)
        self.config = config
        self.pad_outputs = check_pad_outputs(pad_outputs)
        self.embeddings = _Embeddings(config)
        self.encoder = _Stack(config)
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

    def pool(self, last_hidden_state: Tensor) -> Tensor:
        """tanh(dense(last_hidden_state[:, 0])), HF's pooler output (B, H)."""
        if self.pooler is None:
            raise ValueError("pool: this encoder was loaded without pooler weights (add_pooling_layer=False)")
        return pool(self.pooler, last_hidden_state)

    def fuse_qkv_storage_(self) -> Encoder:
        """Make each layer's query/key/value weights (and biases) views of one (3H, H) tensor, so the fused QKV
        GEMM needs no cached copy. Parameters keep their names; load_state_dict copies into the views."""
        with torch.no_grad():
            for layer in self.encoder.layer:
                sa = layer.attention.self
                lins = (sa.query, sa.key, sa.value)
                for name in ("weight", "bias"):
                    ts = [getattr(m, name) for m in lins]
                    if any(t is None for t in ts):
                        continue
                    fused = torch.cat([t.detach() for t in ts])
                    n = ts[0].shape[0]
                    for i, m in enumerate(lins):
                        setattr(m, name, nn.Parameter(fused[i * n : (i + 1) * n], requires_grad=ts[i].requires_grad))
        return self
