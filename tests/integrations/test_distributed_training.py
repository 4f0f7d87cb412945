"""fastbert's models under torch's own distributed training, 2 processes on the CPU (torchrun, gloo): one step of
BertForSequenceClassification wrapped in DistributedDataParallel, or sharded by FSDP2's fully_shard, gives the
loss and the gradients of one unwrapped process on the same global batch; sharding a layer on its own is refused
with an error that says what to do; an Accelerate fine-tuning loop runs unchanged (one line: the model's class)
under `accelerate launch` with 2 processes and logs the one-process losses."""

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
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)  # fully_shard needs a process group
    ids = torch.randint(5, 100, (2, 7))
    with pytest.raises(NotImplementedError, match=r"shard the model as a whole: fully_shard\(model\)"):
        model(ids)


def test_accelerate_launch_runs_a_fine_tuning_loop_unchanged(tmp_path):
    pytest.importorskip("accelerate")
    script = str(Path(__file__).with_name("accelerate_finetune.py"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, script, str(one)], env=env, check=True, capture_output=True)
    # without GPUs, --multi_gpu starts the processes through torchrun and Accelerator(cpu=True) joins them on gloo
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(_free_port())]
    done = subprocess.run([*launch, script, str(two)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["processes"], b["processes"]) == (1, 2) and len(a["losses"]) == 8
    assert b["losses"] == pytest.approx(a["losses"], abs=1e-5)  # measured 1.2e-7
