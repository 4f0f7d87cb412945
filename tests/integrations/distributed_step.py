"""One training step of fastbert's BertForSequenceClassification under torchrun (gloo, CPU), wrapped as the
first argument says: "ddp" (DistributedDataParallel) or "fsdp" (FSDP2's fully_shard on every layer and the
model). Each process takes its half of a seeded global batch; rank 0 also runs the whole batch in one unwrapped
copy, and writes both losses and the largest gradient difference to the JSON file named by the second argument.
(Run by tests/integrations/test_distributed_training.py.)"""

import json
import os
import sys

import torch
import torch.distributed as dist
from transformers import BertConfig

import fastbert


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=300,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=3,
    )
    model = fastbert.BertForSequenceClassification(config)
    single = fastbert.BertForSequenceClassification(config)
    single.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(1)
    B, L = 8, 13
    ids = torch.randint(5, 300, (B, L), generator=g)
    lengths = torch.randint(3, L + 1, (B,), generator=g)
    mask = (torch.arange(L)[None, :] < lengths[:, None]).long()
    labels = torch.randint(0, 3, (B,), generator=g)
    part = slice(rank * B // world, (rank + 1) * B // world)

    if mode == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        wrapped = fully_shard(model)  # one group: fastbert runs its layers' computation, not their forward()
    loss = wrapped(input_ids=ids[part], attention_mask=mask[part], labels=labels[part]).loss
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world
    grads = {}
    for name, p in model.named_parameters():
        grad = p.grad
        if hasattr(grad, "full_tensor"):  # FSDP2: a sharded DTensor, already averaged over the processes
            grad = grad.full_tensor()
        grads[name] = grad
    if rank == 0:
        ref = single(input_ids=ids, attention_mask=mask, labels=labels).loss
        ref.backward()
        ref_grads = dict(single.named_parameters())
        diff = max(float((grads[n] - ref_grads[n].grad).abs().max()) for n in grads)
        scale = max(float(p.grad.abs().max()) for p in single.parameters() if p.grad is not None)
        with open(out, "w") as f:
            json.dump(
                {
                    "loss": float(mean_loss),
                    "ref_loss": float(ref),
                    "grad_diff": diff,
                    "grad_scale": scale,
                    "params": len(grads),
                    "world": world,
                },
                f,
            )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
