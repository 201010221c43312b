"""The training engine: what every task that trains something shares (probe heads, LiT, pretraining, and the dense
and multimodal plugins).

- precision: `autocast(device, "fp32" | "bf16" | "fp16")`;
- AdamW parameter groups: layer-wise lr decay for a backbone (timm's `param_groups_layer_decay` over the backbone's
  `group_matcher`), no-decay names and 1-D parameters, per-group lr multipliers (`ParamSet.lr_scale`), "fully
  decoupled" weight decay (Table A1); the optimizer itself from timm's `create_optimizer_v2`;
- warmup + cosine from timm's `CosineLRScheduler`, stepped per update;
- gradient clipping, seeded per-epoch permutations, DistributedDataParallel wrapping;
- atomic checkpoints with the RNG states, for exact resume;
- progress: a bar on a terminal, a few readable lines in a piped log.

It imports nothing of ours beyond leaf utilities (errors, io, launch), so the core's pretraining loop can use it.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import random
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aimv2_eval.errors import UserError
from aimv2_eval.io import torch_save_atomic

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


# ---------------------------------------------------------------- parameter groups and optimizer
@dataclass
class ParamSet:
    """Parameters trained with one lr multiplier. With `layer_decay`, the module must offer timm's
    `group_matcher` (every registry backbone does): layer l of L gets lr x layer_decay ** (L - l)."""

    module: nn.Module
    lr_scale: float = 1.0
    weight_decay: float | None = None  # None: the optimizer's
    layer_decay: float | None = None
    no_weight_decay: Iterable[str] = field(default_factory=tuple)  # names (fnmatch patterns) never decayed


def param_groups(sets: Sequence[ParamSet], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups for several modules. 1-D parameters (norm gains, biases) and `no_weight_decay` names get no
    decay; each group carries `lr_scale`, which timm's schedulers multiply into the scheduled lr."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    groups: list[dict[str, Any]] = []
    for s in sets:
        wd = weight_decay if s.weight_decay is None else s.weight_decay
        names = set(s.no_weight_decay) | set(getattr(s.module, "no_weight_decay", lambda: set())())
        if s.layer_decay is not None:
            found = param_groups_layer_decay(s.module, weight_decay=wd, no_weight_decay_list=names,
                                             layer_decay=s.layer_decay)
        else:
            found = param_groups_weight_decay(s.module, weight_decay=wd, no_weight_decay_list=names)
        for g in found:
            if g["params"]:
                g["lr_scale"] = g.get("lr_scale", 1.0) * s.lr_scale
                groups.append(g)
    return groups


def build_optimizer(groups: list[dict[str, Any]], lr: float, betas: Sequence[float] = (0.9, 0.999),
                    eps: float = 1e-8, decoupled_decay: bool = False) -> torch.optim.Optimizer:
    """AdamW through timm's factory (torch's AdamW underneath).

    decoupled_decay: "fully decoupled" AdamW (Table A1): the decay follows the schedule, not the lr
    (p -= wd * lr_t / peak_lr * p). torch decays by lr_t * weight_decay, so each group gets weight_decay / peak lr.
    """
    from timm.optim import create_optimizer_v2

    if decoupled_decay:
        groups = [{**g, "weight_decay": g.get("weight_decay", 0.0) / lr} for g in groups]
    return create_optimizer_v2(groups, opt="adamw", lr=lr, betas=tuple(betas), eps=eps)


class Schedule:
    """Linear warmup, then cosine decay to `min_lr` (timm's CosineLRScheduler, per-group peaks and lr_scale); or,
    with `milestones` (update indices), a step decay by `gamma` at each of them (timm's MultiStepLRScheduler, the
    MultiStepLR of mmdet's detection recipes).

    `set(step)` before update `step` (0-based): during warmup update s runs at (s + 1) / warmup of the group's
    peak, so no update runs at lr 0 and update warmup - 1 reaches the peak; from update `warmup` on the cosine
    runs over (s - warmup) / (total - warmup), from the peak towards `min_lr` (times the group's lr_scale).
    A group's lr may be a tensor of peaks (one per slice of stacked parameters, as the probe grid's optimizer
    keeps them): timm's arithmetic is elementwise, so each slice is scheduled as a group of its own would be.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                 min_lr: float = 0.0, milestones: Sequence[int] | None = None, gamma: float = 0.1) -> None:
        from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler

        self.total_steps, self.warmup_steps = max(1, int(total_steps)), max(0, int(warmup_steps))
        if milestones is not None:
            # warmup_prefix=False: milestones count updates from 0, warmup included (mmdet's MultiStepLR `begin=0`);
            # timm decays once t + 1 reaches a milestone, mmdet from the milestone itself on: hence m + 1
            self.timm = MultiStepLRScheduler(optimizer, decay_t=[int(m) + 1 for m in milestones], decay_rate=gamma,
                                             warmup_t=self.warmup_steps, warmup_lr_init=0.0, warmup_prefix=False,
                                             t_in_epochs=False)
            return
        self.timm = CosineLRScheduler(optimizer, t_initial=max(1, self.total_steps - self.warmup_steps),
                                      lr_min=min_lr, warmup_t=self.warmup_steps, warmup_lr_init=0.0,
                                      warmup_prefix=True, t_in_epochs=False)

    def set(self, step: int) -> None:
        # timm's warmup starts at warmup_lr_init for update 0; counting warmup updates from 1 skips that lr-0 step
        self.timm.step_update(num_updates=step + 1 if step < self.warmup_steps else step)


def clip_grad(params: Iterable[torch.nn.Parameter], max_norm: float | None) -> float:
    """Clip the global gradient norm of `params`; returns the norm before clipping (0 when not clipping)."""
    params = [p for p in params if p.grad is not None]
    if not max_norm or not params:
        return 0.0
    return float(nn.utils.clip_grad_norm_(params, max_norm))


def check_finite(loss: torch.Tensor, step: int, hint: str) -> None:
    if not torch.isfinite(loss).all():
        raise UserError(f"loss became {loss.detach().float().cpu().tolist()} at step {step}; {hint}")


# ---------------------------------------------------------------- data order
def epoch_permutation(n: int, seed: int, epoch: int, seed_stride: int = 1_000_003) -> np.ndarray:
    """The order of `n` samples in `epoch`: a fresh seeded permutation per epoch (generator seed
    seed * seed_stride + epoch), the same on every rank and after a resume."""
    g = torch.Generator().manual_seed(seed * seed_stride + epoch)
    return torch.randperm(n, generator=g).numpy()


def batch_slices(order: Sequence[int] | np.ndarray, batch_size: int, drop_last_below: int = 1) -> list[list[int]]:
    """Consecutive batches of `order`; a last batch smaller than `drop_last_below` is dropped."""
    out = [list(map(int, order[i : i + batch_size])) for i in range(0, len(order), batch_size)]
    return [b for b in out if len(b) >= drop_last_below]


# ---------------------------------------------------------------- distributed
def wrap_ddp(module: nn.Module, device: torch.device, sync_buffers: bool = True) -> nn.Module:
    """DistributedDataParallel around `module` (no find_unused_parameters: our modules have none)."""
    ddp = nn.parallel.DistributedDataParallel
    kwargs: dict[str, Any] = {}
    if not sync_buffers:  # the keyword was renamed in torch 2.1x
        kwargs = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                  else {"broadcast_buffers": False})
    return ddp(module, device_ids=[device.index] if device.type == "cuda" else None, **kwargs)


# ---------------------------------------------------------------- checkpoints
def rng_state() -> dict[str, Any]:
    key, state, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {"torch": torch.get_rng_state(),
            "numpy": (key, torch.from_numpy(np.asarray(state).astype(np.int64)), pos, has_gauss, cached),
            "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    key, arr, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((key, arr.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class Checkpointer:
    """One resumable state file: written atomically (a kill mid-write keeps the previous one), read with
    `weights_only=True`, and refused when it belongs to another run (`fingerprint`)."""

    def __init__(self, path: str | Path | None, fingerprint: Any = None,
                 fix: str = "rerun without --resume or delete it to start over", every_minutes: float | None = None) -> None:
        """`every_minutes`: also save inside an epoch once this long has passed since the last save (`due()`), so
        that a long epoch (ImageNet on images, COCO) is not lost whole to a kill; None: at epoch ends only."""
        self.path = Path(path) if path is not None else None
        self.fingerprint, self.fix = fingerprint, fix
        self.every_s = None if every_minutes is None else 60.0 * every_minutes
        self.last_save = time.monotonic()
        self.position: dict[str, Any] | None = None  # where inside an epoch the resumed state was saved

    def due(self) -> bool:
        return self.path is not None and self.every_s is not None and time.monotonic() - self.last_save >= self.every_s

    def save(self, state: dict[str, Any]) -> None:
        if self.path is not None:
            torch_save_atomic(self.path, {**state, "fingerprint": self.fingerprint, "rng": rng_state()})
            self.last_save = time.monotonic()

    def load(self) -> dict[str, Any] | None:
        """The saved state (RNG states restored), or None when there is none."""
        if self.path is None or not self.path.is_file():
            return None
        # imported here: the core imports this module, and the checkpoint reader lives in the core
        from aimv2_eval.core.checkpoints import torch_load_checked

        fix = "delete it to start over"
        state = torch_load_checked(self.path, "checkpoint", fix, unsafe_fix=fix)  # one line for empty, damaged, unsafe
        if not isinstance(state, dict):
            raise UserError(f"{self.path} is not a resumable training state (it holds a {type(state).__name__}); {fix}")
        if state.get("fingerprint") != self.fingerprint:
            raise UserError(f"{self.path} was written by another run (a different recipe or protocol); {self.fix}")
        if not isinstance(state.get("rng"), dict):
            raise UserError(f"{self.path} is an incomplete training state (no random-generator states); {fix}")
        set_rng_state(state["rng"])
        return state

    def save_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, epochs_done: int,
                   history: list, position: dict[str, Any] | None = None) -> None:
        """What an epoch-based plugin resumes from: the trainable state, the optimizer, the history so far; with
        `position` ({"step": updates done in epoch `epochs_done`, ...the loop's running sums}), a state saved
        inside that epoch."""
        self.save({"model": trainable_state(model), "optim": optimizer.state_dict(), "history": history,
                   "epochs_done": epochs_done, "position": position})

    def resume(self, model: nn.Module, optimizer: torch.optim.Optimizer, enabled: bool) -> tuple[int, list]:
        """(epochs done, history) of the state `save_epoch` left, loaded into `model` and `optimizer`;
        (0, []) when not resuming or when there is nothing to resume. A state saved inside an epoch leaves its
        position in `self.position`: the loop skips the updates it already made (data order and augmentation
        are seeded per epoch and sample, so the skipped batches are exactly those)."""
        state = self.load() if enabled else None
        if state is None:
            return 0, []
        model.load_state_dict(state["model"], strict=False)  # frozen parts come from their sources
        optimizer.load_state_dict(state["optim"])
        self.position = state.get("position")
        return int(state["epochs_done"]), list(state["history"])


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Only what training changes (frozen parts are rebuilt from their sources on resume)."""
    return {k: v.detach() for k, v in module.named_parameters() if v.requires_grad} | {
        k: v for k, v in module.named_buffers() if v is not None}


# ---------------------------------------------------------------- progress
class Progress:
    """One tqdm bar per loop on a terminal. In a piped log, or with --no-progress (`enabled=False`), no bar but a few
    readable lines: `epoch()` prints one per epoch (loss, img/s, ...); a loop without epochs prints about `lines`
    (plus the last) instead of one per step. Only rank 0 of a torchrun job prints anything."""

    def __init__(self, total: int, desc: str, unit: str = "step", enabled: bool = True, lines: int = 5,
                 epochs: tuple[int, int] | None = None) -> None:
        """`epochs`: (epochs already done, epochs in all) of an epoch loop, which reports through `epoch()`."""
        self.total, self.desc, self.unit = max(0, int(total)), desc, unit
        self.main = os.environ.get("RANK", "0") == "0"
        self.tty = enabled and self.main and sys.stderr.isatty()
        self.done, self.start = 0, time.perf_counter()
        self.every = max(1, self.total // lines) if lines > 0 and epochs is None else None
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            title = f"{desc} (epoch {epochs[0] + 1}/{epochs[1]})" if epochs else desc
            self.bar = tqdm(total=self.total, desc=title, unit=unit, dynamic_ncols=True)

    def update(self, n: int = 1, **postfix: Any) -> None:
        before, self.done = self.done, self.done + n
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(**postfix, refresh=False)
        elif self.main and self.every and (before // self.every != self.done // self.every or self.done == self.total):
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            extra = " ".join(f"{k}={v}" for k, v in postfix.items())
            self._print(f"{self.desc}: {self.done}/{self.total} {self.unit}s, {rate:.1f} {self.unit}/s {extra}".rstrip())

    def epoch(self, done: int, epochs: int, **values: Any) -> None:
        """The line of a finished epoch (`done` of `epochs`), printed on rank 0 even with --no-progress; the bar's
        title moves on to the next epoch."""
        if not self.main:
            return
        self._print(f"{self.desc}: epoch {done}/{epochs}" + "".join(f", {k} {v}" for k, v in values.items()))
        if self.bar is not None and done < epochs:
            self.bar.set_description(f"{self.desc} (epoch {done + 1}/{epochs})")

    def _print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)  # above the bar, which stays at the bottom
        else:
            print(line, file=sys.stderr, flush=True)

    @property
    def watched(self) -> bool:
        """Whether a postfix would be shown now (reading a loss waits for the device: only when someone looks)."""
        return self.bar is not None or bool(self.main and self.every and (self.done + 1) % self.every == 0)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
