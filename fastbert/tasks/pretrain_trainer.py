"""The Trainer that pretraining runs: transformers' Trainer, whose log lines also carry the two parts of BERT's
loss and how well each is predicted, averaged over the steps since the last log line (and over the processes):
``mlm_loss`` and ``mlm_accuracy`` over the masked positions, ``nsp_loss`` and ``nsp_accuracy`` over the pairs
(without next-sentence prediction, the MLM ones only). They reach log.jsonl, loss.png, the progress bar's log
lines and TensorBoard with the Trainer's own ``loss``.

With ``max_tokens``, batches are cut by a token budget instead of a count (``TokenBudgetBatches``): pairs sorted
by length are cut into batches whose padded size (pairs x the longest) stays within the budget, so short pairs
travel many to a batch and long ones few; the batches are made once and their order is shuffled every epoch
(seeded by the run's seed and the epoch, so a run resumed from an epoch's checkpoint sees the same order), as
fairseq batches by tokens. Under torchrun each process takes every n-th batch. (Checkpoints are written at the
end of each epoch; resuming inside an epoch under torchrun would replay epoch 0's order: accelerate's batch
skipper does not pass the epoch on through its shard.)
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import Trainer

from .pretrain_data import IGNORE

PARTS = ("mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy")


class TokenBudgetBatches:
    """A batch sampler: index lists whose padded size (count x the longest length) is at most ``max_tokens`` (a
    pair longer than the budget rides alone), the same batches every epoch in an order drawn from (seed, epoch)."""

    def __init__(self, lengths: Sequence[int], max_tokens: int, seed: int):
        lengths = np.asarray(lengths)
        if len(lengths) and max_tokens < 1:
            raise ValueError(f"max_tokens: expected a positive budget, got {max_tokens}")
        tie_break = np.random.default_rng(seed).permutation(len(lengths))  # equal lengths in no fixed order
        order = tie_break[np.argsort(lengths[tie_break], kind="stable")]
        self.batches: list[list[int]] = []
        batch: list[int] = []
        for i in order.tolist():
            if batch and (len(batch) + 1) * int(lengths[i]) > max_tokens:
                self.batches.append(batch)
                batch = []
            batch.append(i)
        if batch:
            self.batches.append(batch)
        self.seed, self.epoch = seed, 0
        # accelerate hands the epoch to a batch sampler's set_epoch, or, under torchrun, where it wraps this one
        # in its shard, to the wrapped sampler's `sampler`
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.batches)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return (self.batches[k] for k in order)


class PretrainingTrainer(Trainer):
    def __init__(self, *args: Any, max_tokens: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.max_tokens = max_tokens
        # the parts' sums, then the batches counted, then those with next-sentence labels
        self._sums = torch.zeros(len(PARTS) + 2, dtype=torch.float64)

    def get_train_dataloader(self) -> DataLoader:
        if self.max_tokens is None:
            return super().get_train_dataloader()
        batches = TokenBudgetBatches(self.train_dataset.lengths, self.max_tokens, self.args.seed)
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=batches,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

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
        total = loss.detach().float().mean()  # a vector under nn.DataParallel (several GPUs, one process)
        parts = (total - nsp_loss, mlm_accuracy, nsp_loss, nsp_accuracy, torch.ones(()), has_nsp)
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
