"""ONNX Runtime with its BERT fusions, as one more implementation for `fastbert bench` (optional: onnxruntime).

The HF model is exported with the TorchScript exporter (dynamo=False: the graph ONNX Runtime's BERT fusion
patterns expect), optimized with onnxruntime.transformers' BERT optimizer, and the number of fused nodes per
kind (Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization, ...) is reported so a missed fusion
is visible instead of silently slow.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import BertModel


def available() -> bool:
    try:
        import onnxruntime  # noqa: F401
        import onnxruntime.transformers.optimizer  # noqa: F401

        return True
    except ImportError:
        return False


class _Export(torch.nn.Module):
    def __init__(self, hf: BertModel):
        super().__init__()
        self.hf = hf  # the wrapper must be in eval mode: export restores the mode it found on every submodule

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.hf(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state


def build(
    hf_model: BertModel, device: torch.device | str = "cpu", threads: int | None = None
) -> tuple[Callable, dict[str, int]]:
    """(f(input_ids, attention_mask) -> last_hidden_state as a torch tensor, fused node counts)."""
    import onnxruntime as ort
    from onnxruntime.transformers import optimizer

    cfg = hf_model.config
    if next(hf_model.parameters()).device.type != "cpu" or next(hf_model.parameters()).dtype != torch.float32:
        raise ValueError("onnxruntime: export from a float32 CPU model")
    tmp = tempfile.mkdtemp(prefix="fastbert-ort-")
    try:
        raw, opt_path = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "model.opt.onnx")
        ids = torch.full((2, 8), 1000, dtype=torch.long)
        mask = torch.ones_like(ids)
        mask[1, 5:] = 0  # a padded example: transformers drops an all-ones mask, and the trace would keep that
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                _Export(hf_model).eval(),
                (ids, mask, torch.zeros_like(ids)),
                raw,
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["last_hidden_state"],
                dynamic_axes={
                    n: {0: "batch", 1: "seq"}
                    for n in ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")
                },
                opset_version=17,
                dynamo=False,
            )
        opt = optimizer.optimize_model(
            raw,
            model_type="bert",
            num_heads=cfg.num_attention_heads,
            hidden_size=cfg.hidden_size,
            opt_level=1 if device == "cpu" else 2,
        )
        fused = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
        opt.save_model_to_file(opt_path)
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if str(device).startswith("cuda")
            else ["CPUExecutionProvider"]
        )
        sess = ort.InferenceSession(opt_path, so, providers=providers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # ort holds the model; the export (GBs for bert-large) goes

    def f(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feeds = {
            "input_ids": input_ids.cpu().numpy(),
            "attention_mask": attention_mask.cpu().numpy(),
            "token_type_ids": torch.zeros_like(input_ids).cpu().numpy(),
        }
        return torch.from_numpy(sess.run(None, feeds)[0]).to(input_ids.device)

    return f, fused
