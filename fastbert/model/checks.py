"""Input checks of a forward: TypeError/ValueError/IndexError naming the argument and the expected shape."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["check_inputs"]


def _is_int(t: Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _min_max(t: Tensor) -> tuple[int, int]:
    """(min, max) of an integer tensor with one device-to-host read (one sync on CUDA, not two)."""
    return tuple(torch.stack(torch.aminmax(t)).tolist())


def check_inputs(
    config: Any,
    input_ids: Tensor | None,
    attention_mask: Tensor | None,
    token_type_ids: Tensor | None,
    position_ids: Tensor | None,
    inputs_embeds: Tensor | None,
    embed_dim: int | None = None,
    first_position: int = 0,
) -> None:
    """TypeError/ValueError/IndexError naming the argument; run eagerly only (skipped while compiling).
    ``embed_dim``: the width inputs_embeds must have (hidden_size unless given: ELECTRA's embedding_size);
    ``first_position``: the position id of the first token when position_ids are made by the model (RoBERTa's
    padding_idx + 1)."""
    if embed_dim is None:
        embed_dim = config.hidden_size
    if input_ids is not None:
        if not isinstance(input_ids, Tensor):
            raise TypeError(f"input_ids: expected a torch.Tensor of token ids, got {type(input_ids).__name__}")
        if not _is_int(input_ids):
            raise TypeError(f"input_ids: expected an integer tensor of token ids, got dtype {input_ids.dtype}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected shape (batch, seq_len), got {tuple(input_ids.shape)}")
        shape = tuple(input_ids.shape)
        name = "input_ids"
    else:
        if not isinstance(inputs_embeds, Tensor) or inputs_embeds.dim() != 3:
            raise ValueError("inputs_embeds: expected a tensor of shape (batch, seq_len, hidden_size)")
        if inputs_embeds.shape[-1] != embed_dim:
            raise ValueError(
                f"inputs_embeds: expected last dim {embed_dim} (the embeddings' width), "
                f"got shape {tuple(inputs_embeds.shape)}"
            )
        if not inputs_embeds.is_floating_point():
            raise TypeError(f"inputs_embeds: expected a floating tensor, got {inputs_embeds.dtype}")
        shape = tuple(inputs_embeds.shape[:2])
        name = "inputs_embeds"
    B, L = shape
    if L == 0:
        raise ValueError(f"{name}: sequence length is 0; expected at least one position per row")
    n_pos = config.max_position_embeddings
    if position_ids is None and L + first_position > n_pos:
        extra = f" less the {first_position} position ids before the first token's" if first_position else ""
        raise ValueError(f"{name}: sequence length {L} exceeds max_position_embeddings={n_pos}{extra}")
    if input_ids is not None and input_ids.numel() > 0:
        lo, hi = _min_max(input_ids)
        if lo < 0 or hi >= config.vocab_size:
            bad = lo if lo < 0 else hi
            raise IndexError(f"input_ids: token id {bad} outside the vocabulary [0, {config.vocab_size})")
    if token_type_ids is not None:
        if not isinstance(token_type_ids, Tensor) or not _is_int(token_type_ids):
            raise TypeError("token_type_ids: expected an integer tensor")
        if tuple(token_type_ids.shape) != shape:
            raise ValueError(f"token_type_ids: expected shape {shape} (as {name}), got {tuple(token_type_ids.shape)}")
        if token_type_ids.numel() > 0:
            lo, hi = _min_max(token_type_ids)
            if lo < 0 or hi >= config.type_vocab_size:
                bad = lo if lo < 0 else hi
                raise IndexError(f"token_type_ids: type id {bad} outside [0, type_vocab_size={config.type_vocab_size})")
    if position_ids is not None:
        if not isinstance(position_ids, Tensor) or not _is_int(position_ids):
            raise TypeError("position_ids: expected an integer tensor")
        ps = tuple(position_ids.shape)
        if ps not in ((B, L), (1, L), (L,)):
            raise ValueError(f"position_ids: expected shape {(B, L)}, (1, {L}) or ({L},), got {ps}")
        if position_ids.numel() > 0:
            lo, hi = _min_max(position_ids)
            if lo < 0 or hi >= n_pos:
                bad = lo if lo < 0 else hi
                raise IndexError(f"position_ids: position {bad} outside [0, max_position_embeddings={n_pos})")
    if attention_mask is not None:
        if not isinstance(attention_mask, Tensor):
            raise TypeError(f"attention_mask: expected a torch.Tensor, got {type(attention_mask).__name__}")
        if attention_mask.is_complex():
            raise TypeError(f"attention_mask: expected a bool, integer or float tensor, got {attention_mask.dtype}")
        ms = tuple(attention_mask.shape)
        if attention_mask.dim() == 2:
            if ms != shape:
                raise ValueError(f"attention_mask: expected shape {shape} (as {name}), got {ms}")
        elif attention_mask.dim() == 3:
            if ms != (B, L, L):
                raise ValueError(f"attention_mask: a 3-D mask must have shape {(B, L, L)}, got {ms}")
        elif attention_mask.dim() == 4:
            nh = config.num_attention_heads
            if not (ms[0] in (1, B) and ms[1] in (1, nh) and ms[2] in (1, L) and ms[3] == L):
                raise ValueError(f"attention_mask: a 4-D mask must broadcast to {(B, nh, L, L)}, got {ms}")
        else:
            raise ValueError(
                f"attention_mask: expected 2-D {shape}, 3-D {(B, L, L)} or 4-D (B, 1|heads, L, L), got shape {ms}"
            )
