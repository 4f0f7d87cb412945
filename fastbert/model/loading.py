"""Loading an HF folder of the BERT family (config.json + safetensors or .bin, sharded too) into an ``Encoder`` without
importing transformers."""

from __future__ import annotations

import json
import os

import torch

from .config import EncoderConfig
from .family import MODEL_TYPES, family_of
from .modules import Encoder

__all__ = ["load_encoder"]


_HEAD_PREFIXES = ("cls.", "classifier.", "qa_outputs.", "dropout.")


def _load_file(path: str) -> dict:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint file not found") from None
    except Exception as exc:  # safetensors / pickle / zip errors: truncated or corrupt file
        raise ValueError(
            f"{path}: truncated or corrupt checkpoint ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None


def _read_state_dict(model_dir: str) -> tuple[dict, str]:
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        p = os.path.join(model_dir, single)
        if os.path.isfile(p):
            return _load_file(p), p
        ip = os.path.join(model_dir, index)
        if os.path.isfile(ip):
            try:
                with open(ip, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
            except (OSError, ValueError, KeyError) as exc:
                raise ValueError(f"{ip}: not a valid checkpoint index ({exc})") from None
            sd = {}
            for shard in sorted(set(weight_map.values())):
                sd.update(_load_file(os.path.join(model_dir, shard)))
            return sd, ip
    raise FileNotFoundError(f"{model_dir}: no model.safetensors, pytorch_model.bin or sharded index found")


def _hf_key(k: str, prefix: str) -> str:
    """A checkpoint key as the base model names it: without the head model's prefix (``bert.``, ``roberta.``,
    ``distilbert.``, ``electra.``), TF-era LayerNorm names mapped."""
    if k.startswith(prefix):
        k = k[len(prefix) :]
    return k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def load_encoder(
    model_dir: str, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", pad_outputs: str = "zero"
) -> Encoder:
    """An eval-mode ``Encoder`` from an HF folder of the BERT family (config.json + weights; config.json's
    model_type: bert, roberta, xlm-roberta, camembert, distilbert or electra), without importing transformers.

    Keys may carry the head model's prefix (``bert.``, ``roberta.``, ...); head keys (``cls.*``,
    ``classifier.*``, ...) are ignored; a missing encoder weight, a shape that disagrees with config.json or a
    corrupt file raises an error naming the file."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"{model_dir}: model folder not found")
    config = EncoderConfig.from_json(os.path.join(model_dir, "config.json"))
    if config.model_type not in MODEL_TYPES:
        raise ValueError(
            f"{os.path.join(model_dir, 'config.json')}: model_type {config.model_type!r} is not one fastbert runs "
            f"(one of {', '.join(MODEL_TYPES)})"
        )
    raw, path = _read_state_dict(model_dir)
    sd = {}
    prefix = family_of(config).prefix + "."
    for k, v in raw.items():
        sd[_hf_key(k, prefix)] = v
    has_pooler = "pooler.dense.weight" in sd
    with torch.device("meta"):
        enc = Encoder(config, add_pooling_layer=has_pooler, pad_outputs=pad_outputs)
    wanted = enc.state_dict()
    missing = [k for k in wanted if k not in sd]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks encoder weights {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    ready = {}
    for k, ref in wanted.items():
        t = sd[k]
        if tuple(t.shape) != tuple(ref.shape):
            raise ValueError(f"{path}: {k} has shape {tuple(t.shape)}, config.json implies {tuple(ref.shape)}")
        ready[k] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
    enc.load_state_dict(ready, strict=True, assign=True)
    enc.fuse_qkv_storage_()
    return enc.eval().requires_grad_(False)
