"""What the detection plugins (vitdet, grounding) share beyond the model: resolving a fine-tuned ViTDet protocol and
the epoch loop that trains the detector on the project's engine (seeded shuffles, per-step schedule, autocast,
finite-loss check, clipping, DDP shards, an atomic checkpoint per epoch for exact resume, one progress bar)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from aimv2_eval.backbones import evenly_spaced_global_blocks
from aimv2_eval.dense import mmdet_glue
from aimv2_eval.dense.vitdet import VITDET_STRIDE
from aimv2_eval.engine import (
    Checkpointer,
    Progress,
    Schedule,
    autocast,
    batch_slices,
    check_finite,
    clip_grad,
    epoch_permutation,
    wrap_ddp,
)
from aimv2_eval.errors import UserError
from aimv2_eval.launch.distributed import DistContext, all_reduce_sum, shard
from aimv2_eval.plugins.base import RunOptions


def resolve_protocol(task: Any, options: RunOptions, backbone: Any, defaults: dict[str, Any],
                     required: Sequence[str], engines: Sequence[str], builtin: str, example: str,
                     what: str, size_multiple: int = VITDET_STRIDE) -> dict[str, Any]:
    """The task's protocol with defaults and command-line overrides, checked: `engine: auto` resolved (mmdet when
    installed, else `builtin`; so that the cell id says which engine ran), the image size a multiple of
    `size_multiple`, global blocks placed, and the token grid rule of `dense.vitdet` recorded."""
    p = {**defaults, **json.loads(json.dumps(task.protocol))}
    missing = [k for k in required if k not in p]
    if missing:
        raise UserError(f"task {task.name}: protocol is missing {', '.join(missing)} (see {example})")
    if not backbone.is_vit:
        raise UserError(f"{backbone.name} is a {backbone.family} network, not a ViT: {what} needs a ViT backbone")
    if p["engine"] not in engines:
        raise UserError(f"task {task.name}: protocol.engine must be one of {', '.join(engines)}, got {p['engine']!r}")
    if p["engine"] == "auto":
        p["engine"] = "mmdet" if mmdet_glue.available() else builtin
    for key, value in (("epochs", options.epochs), ("batch_size", options.batch_size), ("limit", options.limit)):
        if value is not None:
            p[key] = value
    p["image_size"], p["epochs"], p["batch_size"] = int(p["image_size"]), int(p["epochs"]), int(p["batch_size"])
    multiple = max(size_multiple, VITDET_STRIDE)
    if p["image_size"] % multiple or p["image_size"] < 4 * VITDET_STRIDE:
        raise UserError(f"protocol.image_size must be a multiple of {multiple} and >= {4 * VITDET_STRIDE}, "
                        f"got {p['image_size']}")
    if p["global_blocks"] == "evenly_spaced":
        p["global_blocks"] = list(evenly_spaced_global_blocks(backbone.depth))
    p["token_grid"] = p["image_size"] // VITDET_STRIDE  # every family sees a grid of image / 16
    p["backbone_input_size"] = p["token_grid"] * backbone.patch_size
    p["precision"] = options.precision
    return p


def steps_per_epoch(positions: Sequence[int] | np.ndarray, batch_size: int) -> int:
    return len(batch_slices(positions, batch_size))


def train_epochs(model: nn.Module, optim: torch.optim.Optimizer, schedule: Schedule, samples: Any,
                 positions: np.ndarray, *, epochs: int, batch_size: int, collate: Callable,
                 step_loss: Callable[[nn.Module, Any], tuple[dict[str, torch.Tensor], int]],
                 checkpointer: Checkpointer, options: RunOptions, ctx: DistContext, precision: str,
                 grad_clip: float | None, desc: str) -> tuple[list[float], float]:
    """Train `model` for `epochs` over `samples[positions]` (a dataset with an `epoch` attribute that seeds its
    augmentation); `step_loss(model, batch)` -> (named losses, images in the batch). Resumes from `checkpointer`
    when `options.resume`. Returns (mean loss per epoch, training images per second)."""
    per_epoch = steps_per_epoch(positions, batch_size)
    start_epoch, history = checkpointer.resume(model, optim, options.resume)
    wrapped = wrap_ddp(model, ctx.device) if ctx.distributed else model
    resumed = checkpointer.position or {}  # a state saved inside epoch `start_epoch`: skip its updates
    skip = int(resumed.get("step", 0))
    bar = Progress((epochs - start_epoch) * per_epoch - skip, desc, enabled=options.progress and ctx.is_main,
                   epochs=(start_epoch, epochs))
    trainable = [q for q in model.parameters() if q.requires_grad]
    start, images_seen = time.perf_counter(), 0
    for epoch in range(start_epoch, epochs):
        samples.epoch = epoch
        order = positions[epoch_permutation(len(positions), options.seed, epoch)]
        batches = [shard(b, ctx) for b in batch_slices(order, batch_size)][skip:]
        # The loader's own generator: creating an iterator draws a worker seed, which from the global RNG would
        # shift every random draw after it (drop path) between a run cut inside an epoch and an uncut one.
        loader = torch.utils.data.DataLoader(samples, batch_sampler=batches, num_workers=options.workers,
                                             collate_fn=collate,
                                             generator=torch.Generator().manual_seed(options.seed * 1_000_003 + epoch))
        losses = list(resumed.get("losses", [])) if skip else []
        for i, batch in enumerate(loader, start=skip):
            step = epoch * per_epoch + i
            schedule.set(step)
            with autocast(ctx.device, precision):
                parts, n = step_loss(wrapped, batch)
            loss = sum(parts.values())
            check_finite(loss, step, "lower protocol.lr or raise protocol.warmup_iters")
            optim.zero_grad(set_to_none=True)
            loss.backward()
            clip_grad(trainable, grad_clip)
            optim.step()
            losses.append(float(loss.detach()))
            images_seen += n * ctx.world_size
            bar.update(1, loss=f"{losses[-1]:.3f}")
            if ctx.is_main and i + 1 < per_epoch and checkpointer.due():
                checkpointer.save_epoch(model, optim, epoch, history, position={"step": i + 1, "losses": losses})
        skip = 0
        mean = torch.tensor([sum(losses), len(losses)], dtype=torch.float64)
        all_reduce_sum(mean, ctx)
        history.append(round(float(mean[0] / max(1.0, float(mean[1]))), 5))
        if ctx.is_main:
            checkpointer.save_epoch(model, optim, epoch + 1, history)
        rate = images_seen / max(time.perf_counter() - start, 1e-9)
        bar.epoch(epoch + 1, epochs, loss=f"{history[-1]:.4f}", **{"img/s": f"{rate:.1f}"})
    bar.close()
    return history, round(images_seen / max(time.perf_counter() - start, 1e-9), 3)


def publish(task: Any, metrics: dict[str, float], predictions: list[dict], options: RunOptions,
            ctx: DistContext) -> dict[str, str]:
    """Write the predictions beside the record (before anything can fail: they survive a bad metric.main) and check
    that the task's main metric was produced. Returns the artifacts entry."""
    artifacts = {}
    if ctx.is_main and options.output_dir is not None:
        from aimv2_eval.metrics.coco import write_predictions

        write_predictions(options.output_dir / "predictions.json", predictions)
        artifacts["predictions"] = "predictions.json"
    main = task.metric["main"]
    if main not in metrics:
        raise UserError(f"task {task.name}: metric.main {main!r} is not produced; choose one of "
                        f"{', '.join(sorted(metrics))}")
    return artifacts
