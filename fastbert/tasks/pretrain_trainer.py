"""The Trainer that pretraining runs: transformers' Trainer, whose log lines also carry the two parts of BERT's
loss and how well each is predicted, averaged over the steps since the last log line (and over the processes):
``mlm_loss`` and ``mlm_accuracy`` over the masked positions, ``nsp_loss`` and ``nsp_accuracy`` over the pairs
(without next-sentence prediction, the MLM ones only). They reach log.jsonl, loss.png, the progress bar's log
lines and TensorBoard with the Trainer's own ``loss``."""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from .pretrain_data import IGNORE

PARTS = ("mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy")


class PretrainingTrainer(Trainer):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # the parts' sums, then the batches counted, then those with next-sentence labels
        self._sums = torch.zeros(len(PARTS) + 2, dtype=torch.float64)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training:
            self._count(loss, outputs, inputs)
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def _count(self, loss: torch.Tensor, outputs: Any, inputs: dict[str, Any]) -> None:
        labels = inputs["labels"]
        chosen = labels != IGNORE
        logits = outputs.prediction_logits
        predicted = (logits if logits.dim() == 2 else logits[chosen]).argmax(-1)  # sparse: labelled rows only
        mlm_accuracy = (predicted == labels[chosen]).float().mean()
        nsp_loss = nsp_accuracy = torch.zeros(())
        nsp = inputs.get("next_sentence_label")
        if nsp is not None:
            nsp_logits = outputs.seq_relationship_logits.float()
            nsp_loss = torch.nn.functional.cross_entropy(nsp_logits, nsp.reshape(-1))
            nsp_accuracy = (nsp_logits.argmax(-1) == nsp.reshape(-1)).float().mean()
        has_nsp = torch.tensor(float(nsp is not None))
        parts = (loss.detach().float() - nsp_loss, mlm_accuracy, nsp_loss, nsp_accuracy, torch.ones(()), has_nsp)
        self._sums += torch.stack([p.detach().double().cpu() for p in parts])

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._sums[-2] > 0:
            sums = self._sums.to(self.args.device)
            if self.args.world_size > 1:
                sums = self.accelerator.reduce(sums, reduction="sum")
            batches, nsp_batches = float(sums[-2]), float(sums[-1])
            for name, total in zip(PARTS, sums[:-2].tolist()):
                if name.startswith("mlm"):
                    logs[name] = round(total / batches, 4)
                elif nsp_batches:
                    logs[name] = round(total / nsp_batches, 4)
            self._sums.zero_()
        super().log(logs, start_time)
