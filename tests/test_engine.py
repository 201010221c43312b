"""The shared training engine: schedule, parameter groups with layer decay, checkpoints, progress lines."""

from __future__ import annotations

import io
import math
import sys

import pytest
import torch
from torch import nn

from aimv2_eval.backbones import create_backbone
from aimv2_eval.engine import (
    Checkpointer,
    ParamSet,
    Progress,
    Schedule,
    build_optimizer,
    epoch_permutation,
    param_groups,
)
from aimv2_eval.errors import UserError


def _lrs(total: int, warmup: int, peak: float, floor: float) -> list[float]:
    opt = build_optimizer([{"params": [nn.Parameter(torch.zeros(2))], "lr": peak}], lr=peak)
    sched = Schedule(opt, total, warmup, floor)
    out = []
    for step in range(total):
        sched.set(step)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_schedule_warmup_cosine_floor():
    peak, floor, total, warm = 1e-3, 1e-5, 100, 10
    lrs = _lrs(total, warm, peak, floor)
    assert lrs[0] == pytest.approx(peak / warm)  # the first update already learns
    assert lrs[warm - 1] == pytest.approx(peak)
    assert lrs[warm] == pytest.approx(peak)  # the cosine starts at the peak
    assert lrs[-1] == pytest.approx(floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert all(a >= b for a, b in zip(lrs[warm - 1 :], lrs[warm:]))
    assert _lrs(10, 0, peak, floor)[0] == pytest.approx(peak)  # no warmup: starts at the peak


def test_step_schedule_decays_at_the_milestones_as_mmdet():
    """mmdet's MultiStepLR(milestones=[19, 26]) by epoch: epochs 0-18 at the peak, 19-25 x0.1, 26- x0.01."""
    opt = build_optimizer([{"params": [nn.Parameter(torch.zeros(2))], "lr": 4e-4}], lr=4e-4)
    sched = Schedule(opt, 30, 0, milestones=[19, 26], gamma=0.1)
    lrs = []
    for step in range(30):
        sched.set(step)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:19] == pytest.approx([4e-4] * 19)
    assert lrs[19:26] == pytest.approx([4e-5] * 7)
    assert lrs[26:] == pytest.approx([4e-6] * 4)


def test_schedule_keeps_each_groups_peak_and_lr_scale():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = build_optimizer([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-3, "lr_scale": 8.0}], lr=1e-3)
    sched = Schedule(opt, 10, 0, 0.0)
    sched.set(0)
    assert opt.param_groups[1]["lr"] == pytest.approx(8 * opt.param_groups[0]["lr"])


def test_layer_decay_groups_cover_the_backbone_and_scale_by_depth():
    backbone = create_backbone("aimv2-tiny", pretrained=False, trainable=True)
    head = nn.Linear(backbone.meta.embed_dim, 3)
    groups = param_groups([ParamSet(backbone, layer_decay=0.5), ParamSet(head, lr_scale=8.0)], weight_decay=0.1)
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(backbone.parameters())) + 2
    ids = backbone.layer_ids()
    depth = backbone.meta.depth
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(backbone.named_parameters())
    for name, p in named.items():
        assert scale_of[id(p)] == pytest.approx(0.5 ** (depth + 1 - ids[name]))
    assert scale_of[id(head.weight)] == 8.0
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay_of[id(named["encoder.preprocessor.pos_embed"])] == 0.0  # position table: no decay
    assert decay_of[id(head.bias)] == 0.0 and decay_of[id(head.weight)] == 0.1


def test_decoupled_decay_divides_by_the_peak_lr():
    p = nn.Parameter(torch.ones(2, 2))
    opt = build_optimizer([{"params": [p], "weight_decay": 1e-4}], lr=1e-3, decoupled_decay=True)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.1)


def test_epoch_permutation_is_seeded_per_epoch():
    a, b = epoch_permutation(50, 0, 0), epoch_permutation(50, 0, 1)
    assert sorted(a.tolist()) == list(range(50)) and (a != b).any()
    assert (epoch_permutation(50, 0, 0) == a).all() and (epoch_permutation(50, 1, 0) != a).any()


def test_checkpointer_restores_rng_and_refuses_another_run(tmp_path):
    ck = Checkpointer(tmp_path / "state.ckpt", fingerprint={"lr": 1})
    torch.manual_seed(3)
    ck.save({"step": 7})
    expected = torch.rand(3)
    torch.manual_seed(99)
    assert ck.load()["step"] == 7 and torch.equal(torch.rand(3), expected)
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed
    with pytest.raises(UserError, match="another run"):
        Checkpointer(tmp_path / "state.ckpt", fingerprint={"lr": 2}).load()
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="delete it"):
        Checkpointer(tmp_path / "bad.ckpt").load()
    assert Checkpointer(tmp_path / "absent.ckpt").load() is None


def test_progress_in_a_piped_log_prints_a_few_lines(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    bar = Progress(1000, "train", lines=4)
    for _ in range(1000):
        bar.update(1, loss="0.1")
    bar.close()
    lines = err.getvalue().splitlines()
    assert 3 <= len(lines) <= 5 and lines[-1].startswith("train: 1000/1000 steps")
