"""A plain fine-tuning loop on Accelerate, written for transformers' BertForSequenceClassification, with the one
line that makes it fastbert's: run as it is by `python` (one process) and by `accelerate launch` (several), it
writes each step's loss over the global batch of 8 to the JSON file named by its argument.
(Run by tests/integrations/test_distributed_training.py.)"""

import json
import sys

import torch
from accelerate import Accelerator
from transformers import BertConfig

import fastbert

accelerator = Accelerator(cpu=True)
torch.manual_seed(0)
config = BertConfig(
    vocab_size=300,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=96,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    num_labels=2,
)
model = fastbert.BertForSequenceClassification(config)  # the one line: was transformers.BertForSequenceClassification
g = torch.Generator().manual_seed(1)
ids = torch.randint(5, 300, (64, 12), generator=g)
mask = (torch.arange(12)[None, :] < torch.randint(3, 13, (64, 1), generator=g)).long()
labels = (ids[:, 0] > 150).long()
rows = [{"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in zip(ids, mask, labels)]
per_process = 8 // accelerator.num_processes
loader = torch.utils.data.DataLoader(rows, batch_size=per_process, shuffle=False)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
losses = []
for batch in loader:
    loss = model(**batch).loss
    accelerator.backward(loss)
    optimizer.step()
    optimizer.zero_grad()
    losses.append(float(accelerator.reduce(loss.detach(), reduction="mean")))
if accelerator.is_main_process:
    with open(sys.argv[1], "w") as f:
        json.dump({"losses": losses, "processes": accelerator.num_processes}, f)
accelerator.wait_for_everyone()
accelerator.end_training()  # destroys the process group: a process leaving with it alive can abort in gloo
