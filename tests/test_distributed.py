"""`torchrun --nproc_per_node 2` (gloo, CPU) trains the probe with DDP on sharded data and equals one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from aimv2_eval.backbones import describe_backbone, get_spec
from aimv2_eval.cli import main
from aimv2_eval.launch.distributed import DistContext, shard
from aimv2_eval.plugins import RunOptions, get_plugin
from aimv2_eval.tasks import load_task

TINY = ["--backbone", "aimv2-tiny"] + ([] if get_spec("aimv2-tiny").weights_present() else ["--random-init"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shards_cover_a_batch_once():
    batch = list(range(7))
    parts = [shard(batch, DistContext(rank=r, world_size=3)) for r in range(3)]
    assert sorted(sum(parts, [])) == batch and [len(p) for p in parts] == [3, 2, 2]
    assert shard([5], DistContext(rank=1, world_size=2)) == []  # a rank may get nothing: it still steps


def test_two_process_torchrun_equals_one_process(tmp_path):
    limit = "60"
    task = load_task("digits_probe")
    plugin = get_plugin("probe")
    options = RunOptions(limit=int(limit))
    n_train = len(plugin.load_data(task, plugin.resolve(task, options, describe_backbone("aimv2-tiny")), options).train_pos)
    # a batch size that leaves one sample in the last batch: one rank then steps on an empty shard
    batch = next(b for b in range(8, n_train) if n_train % b == 1)
    args = [*TINY, "--task", "digits_probe", "--limit", limit, "--epochs", "2", "--batch-size", str(batch),
            "--no-progress", "--device", "cpu"]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["run", *args, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(n)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), "-m", "aimv2_eval.cli", "run", *args, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [one] = list((tmp_path / "one").rglob("*.json"))
    [two] = list((tmp_path / "two").rglob("*.json"))
    assert one.relative_to(tmp_path / "one") == two.relative_to(tmp_path / "two")  # same cell
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["environment"]["world_size"] == 2 and a["environment"]["world_size"] == 1
    assert a["metrics"]["top1"] == b["metrics"]["top1"] and a["metrics"]["top5"] == b["metrics"]["top5"]
    assert a["details"]["test_loss"] == pytest.approx(b["details"]["test_loss"], abs=1e-4)
    assert a["selection"]["chosen"] == b["selection"]["chosen"]
    for x, y in zip(a["selection"]["candidates"], b["selection"]["candidates"]):
        assert x == pytest.approx(y, abs=1e-4)
    assert a["details"]["sizes"]["train"] % batch == 1
