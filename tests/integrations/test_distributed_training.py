"""fastbert's models under torch's own distributed training, 2 processes on the CPU (torchrun, gloo): one step of
BertForSequenceClassification wrapped in DistributedDataParallel, or sharded by FSDP2's fully_shard, gives the
loss and the gradients of one unwrapped process on the same global batch; sharding a layer on its own is refused
with an error that says what to do."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastbert

SCRIPT = Path(__file__).with_name("distributed_step.py")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_step_as_one(tmp_path, mode):
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port", str(_free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*cmd, str(SCRIPT), mode, str(out)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["world"] == 2 and r["params"] > 30
    assert abs(r["loss"] - r["ref_loss"]) <= 1e-6, r  # measured: equal
    assert r["grad_diff"] <= 1e-6 * max(1.0, r["grad_scale"]), r  # measured 7.5e-09 (ddp and fsdp)


def test_sharding_a_layer_on_its_own_is_refused(monkeypatch):
    from torch.distributed.fsdp import FSDPModule

    from tests.helpers import hf_config

    model = fastbert.BertModel(hf_config(num_hidden_layers=2))
    layer = model.encoder.layer[0]
    # what fully_shard(layer) does to the layer's class (without a process group)
    monkeypatch.setattr(layer, "__class__", type("FSDPBertLayer", (FSDPModule, type(layer)), {}))
    ids = torch.randint(5, 100, (2, 7))
    with pytest.raises(NotImplementedError, match=r"shard the model as a whole: fully_shard\(model\)"):
        model(ids)
