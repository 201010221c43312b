"""The probe grid's batched training (stacked parameters, per-probe clipping, GridAdamW) against an independent
reference: one copy per configuration, trained with torch.optim.AdamW and torch.nn.utils.clip_grad_norm_ under the
same engine.Schedule. The copies share the probe's forward (tests/test_probe.py checks it against a plain
attentive probe); what differs is everything the batched path replaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aimv2_eval.engine import Schedule
from aimv2_eval.plugins.probe import PROBE_PARAMS, GridAdamW, ProbeGrid, train_step

pytestmark = pytest.mark.usefixtures("one_thread")

DIM, CLASSES, HEADS, SEED = 32, 5, 4, 3
# a spread of lr and wd (one without decay); large lrs so that a few steps separate the heads
CONFIGS = [(1e-3, 0.05), (3e-3, 0.1), (1e-2, 0.0), (3e-2, 0.05)]
BETAS = (0.9, 0.999)
CLIP = 1.0
STEPS, WARMUP, MIN_LR, BATCH = 8, 2, 1e-4, 12


def toy_tokens(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 6, DIM) tokens whose mean carries the class, so that the probes learn something in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    centres = torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(99))
    return torch.randn(n, 6, DIM, generator=g) + centres[y][:, None, :], y


def train_batched(tokens: torch.Tensor, y: torch.Tensor) -> ProbeGrid:
    grid = ProbeGrid(DIM, CLASSES, len(CONFIGS), HEADS, seed=SEED)
    optim = GridAdamW(grid.parameters(), lr=[lr for lr, _ in CONFIGS], weight_decay=[wd for _, wd in CONFIGS],
                      betas=BETAS)
    schedule = Schedule(optim, STEPS, WARMUP, MIN_LR)
    for step in range(STEPS):
        schedule.set(step)
        batch = slice(step * BATCH, (step + 1) * BATCH)
        train_step(grid, optim, tokens[batch], y[batch], CLIP, 1.0 / BATCH)
    return grid


def train_reference(tokens: torch.Tensor, y: torch.Tensor) -> tuple[list[ProbeGrid], list[list[float]], list]:
    """One single-probe copy per configuration, each with torch's AdamW, clip_grad_norm_ and its own Schedule.
    Returns the copies, the pre-clipping norms and every step's lr of each copy."""
    copies, norms, lrs = [], [], []
    for lr, wd in CONFIGS:
        probe = ProbeGrid(DIM, CLASSES, 1, HEADS, seed=SEED)
        optim = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=wd, betas=BETAS)
        schedule = Schedule(optim, STEPS, WARMUP, MIN_LR)
        norms.append([])
        lrs.append([])
        for step in range(STEPS):
            schedule.set(step)
            lrs[-1].append(optim.param_groups[0]["lr"])
            batch = slice(step * BATCH, (step + 1) * BATCH)
            F.cross_entropy(probe(tokens[batch])[:, 0], y[batch]).backward()
            norms[-1].append(float(torch.nn.utils.clip_grad_norm_(probe.parameters(), CLIP)))
            optim.step()
            optim.zero_grad(set_to_none=True)
        copies.append(probe)
    return copies, norms, lrs


@torch.no_grad()
def top1_and_loss(logits: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per probe: top-1 (%) and mean cross-entropy of logits (B, G, C)."""
    top1 = (logits.argmax(-1) == y[:, None]).double().mean(0) * 100
    loss = F.cross_entropy(logits.permute(0, 2, 1), y[:, None].expand(-1, logits.shape[1]), reduction="none").mean(0)
    return top1.tolist(), loss.tolist()


def chosen(val_top1: list[float], val_loss: list[float]) -> int:
    """_ProbeRun._result's rule: highest val top-1, then lower val loss, then the earlier config."""
    return min(range(len(val_top1)), key=lambda g: (-val_top1[g], val_loss[g], g))


def test_batched_grid_equals_per_head_adamw_and_clipping():
    tokens, y = toy_tokens(STEPS * BATCH, seed=0)
    grid = train_batched(tokens, y)
    copies, norms, _ = train_reference(tokens, y)
    # both branches of the clipping ran: some heads' norms above the threshold, some below
    flat = [n for head in norms for n in head]
    assert min(flat) < CLIP < max(flat), flat
    for g, probe in enumerate(copies):
        for name in PROBE_PARAMS:
            torch.testing.assert_close(getattr(grid, name)[g], getattr(probe, name)[0], rtol=0, atol=1e-6,
                                       msg=lambda m, g=g, name=name: f"head {g} {name}: {m}")
    torch.testing.assert_close(grid.norm.running_mean, copies[0].norm.running_mean)
    # the heads really moved apart (otherwise the comparison above would say little)
    assert (grid.weight[0] - grid.weight[-1]).abs().max() > 1e-2

    grid.eval()
    val, test = toy_tokens(60, seed=1), toy_tokens(60, seed=2)
    ours = {name: top1_and_loss(grid(x), t) for name, (x, t) in (("val", val), ("test", test))}
    for p in copies:
        p.eval()
    theirs = {name: top1_and_loss(torch.cat([p(x) for p in copies], dim=1), t)
              for name, (x, t) in (("val", val), ("test", test))}
    assert ours["test"][0] == theirs["test"][0]
    assert ours["val"][0] == theirs["val"][0]
    best = chosen(*ours["val"])
    assert best == chosen(*theirs["val"])
    assert ours["test"][0][best] == theirs["test"][0][best]
    assert len(set(ours["val"][0])) > 1  # the heads differ in accuracy: choosing among them means something


def test_schedule_gives_each_head_its_single_run_lr():
    """engine.Schedule on GridAdamW's lr vector gives each head, at every step, the lr its own group would get."""
    _, _, reference = train_reference(*toy_tokens(STEPS * BATCH, seed=0))
    optim = GridAdamW([torch.zeros(len(CONFIGS), 2, requires_grad=True)], lr=[lr for lr, _ in CONFIGS],
                      weight_decay=[wd for _, wd in CONFIGS])
    schedule = Schedule(optim, STEPS, WARMUP, MIN_LR)
    for step in range(STEPS):
        schedule.set(step)
        assert optim.param_groups[0]["lr"].tolist() == [head[step] for head in reference]


def test_grid_optimizer_resumes_exactly_and_refuses_another_layout():
    tokens, y = toy_tokens(STEPS * BATCH, seed=0)

    def run(steps: range, grid: ProbeGrid, optim: GridAdamW) -> None:
        for step in steps:
            batch = slice(step * BATCH, (step + 1) * BATCH)
            train_step(grid, optim, tokens[batch], y[batch], CLIP, 1.0 / BATCH)

    def build() -> tuple[ProbeGrid, GridAdamW]:
        grid = ProbeGrid(DIM, CLASSES, 2, HEADS, seed=SEED)
        return grid, GridAdamW(grid.parameters(), lr=[1e-3, 1e-2], weight_decay=[0.05, 0.1])

    whole = build()
    run(range(4), *whole)
    first = build()
    run(range(2), *first)
    resumed = build()
    resumed[0].load_state_dict(first[0].state_dict())
    resumed[1].load_state_dict(first[1].state_dict())
    run(range(2, 4), *resumed)
    for a, b in zip(whole[0].parameters(), resumed[0].parameters()):
        assert torch.equal(a, b)

    # a state saved by per-head parameters (the layout before stacking) does not fit the stacked tensors
    single = ProbeGrid(DIM, CLASSES, 1, HEADS, seed=SEED)
    old = [torch.zeros_like(p[0], requires_grad=True) for p in single.parameters()]
    old_optim = torch.optim.AdamW(old, lr=1e-3)
    for p in old:
        p.grad = torch.ones_like(p)
    old_optim.step()
    with pytest.raises(ValueError, match="another probe layout"):
        GridAdamW(single.parameters(), lr=[1e-3], weight_decay=[0.05]).load_state_dict(old_optim.state_dict())
