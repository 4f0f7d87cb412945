"""The model: configuration, input checks, the HF-named module tree, the fused forward, lean loading and int8
quantization. Torch only (no transformers import), so batch jobs start fast."""

from .config import PAD_OUTPUTS, EncoderConfig, check_pad_outputs, validate_config
from .forward import EncoderOutput, pool, run, set_fast_inference
from .loading import load_encoder
from .modules import Encoder, FastBertModule
from .quantize import base_dtype, dequantize, is_quantized, quantize

__all__ = [
    "EncoderConfig",
    "Encoder",
    "EncoderOutput",
    "FastBertModule",
    "load_encoder",
    "run",
    "pool",
    "PAD_OUTPUTS",
    "check_pad_outputs",
    "validate_config",
    "set_fast_inference",
    "quantize",
    "dequantize",
    "is_quantized",
    "base_dtype",
]
