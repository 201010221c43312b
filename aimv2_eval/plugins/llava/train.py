"""One-stage LLaVA instruction tuning (paper Section 4.3, Table C1): connector and LM trained together, the vision
tower frozen; AdamW with one lr for the LM and one for the connector, warmup + cosine to `min_lr`, gradient clipping,
loss on answer tokens only. Iteration-based like Table C1 (5,000 iterations at batch 128 for the LLaVA mixture).

Scale: with `fsdp: true` under torchrun the LM's decoder layers and the LM are sharded with PyTorch FSDP
(`fully_shard`), each rank holding a slice of every parameter; the tower is replicated and frozen, the connector is
sharded with the root. The global batch is split across ranks, so the loss curve equals one process's. Evaluation runs on
an unsharded copy (`full_state`): ranks generate different numbers of tokens, which sharded forwards cannot.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from aimv2_eval.engine import (
    Checkpointer,
    ParamSet,
    Progress,
    Schedule,
    autocast,
    build_optimizer,
    check_finite,
    clip_grad,
    epoch_permutation,
    param_groups,
    wrap_ddp,
)
from aimv2_eval.errors import UserError
from aimv2_eval.launch.distributed import DistContext, all_reduce_sum
from aimv2_eval.plugins.llava.model import IGNORE_INDEX, LlavaModel
from aimv2_eval.plugins.llava.prompts import pad


def shard_lm(model: LlavaModel) -> None:
    """FSDP2: every decoder layer its own unit; the LlavaModel the root (its forward embeds, splices and runs the
    LM, so the root's hooks see every call), with the frozen tower left out: replicated, never gathered."""
    from torch.distributed.fsdp import fully_shard

    layers = getattr(getattr(model.lm, "model", None), "layers", None)
    if layers is None:
        raise UserError("fsdp: the LM has no `model.layers` (a Llama-style decoder is expected)")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model, ignored_params=set(model.tower.parameters()))


def full_state(model: LlavaModel) -> dict[str, torch.Tensor]:
    """Connector + LM weights, unsharded (every rank must call it: FSDP gathers them collectively)."""
    from torch.distributed.tensor import DTensor

    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu()
            for k, v in model.state_dict().items() if not k.startswith("tower.")}


def train(model: LlavaModel, samples: list[tuple[list[int], list[int], Any]], encode: Callable[[list[Any]], list],
          p: dict[str, Any], ctx: DistContext, checkpointer: Checkpointer, resume: bool, progress: bool,
          seed: int) -> dict[str, Any]:
    """samples: (input_ids, labels, image key) per conversation; `encode(keys)` gives their tower features.
    Returns the loss history (one mean per `log_every` steps) and throughput. `train.micro_batch` splits each rank's
    share of a step into forwards of that many conversations (gradient accumulation: same update, less memory)."""
    t = p["train"]
    steps, bs = int(t["iterations"]), int(t["batch_size"])
    if bs % ctx.world_size:
        raise UserError(f"train.batch_size {bs} must be divisible by the {ctx.world_size} processes")
    model.train()  # the tower stays in eval mode (VisionTower.train)
    if t.get("grad_checkpointing"):
        model.lm.gradient_checkpointing_enable()
    net: torch.nn.Module = model
    sharded = ctx.distributed and bool(t.get("fsdp"))
    if sharded and resume:
        raise UserError("--resume with fsdp: resumable sharded checkpoints are not implemented yet; rerun without "
                        "--resume (the tuned model itself is cached once training ends)")
    if sharded:
        shard_lm(model)
    elif ctx.distributed:
        net = wrap_ddp(model, ctx.device)
    groups = param_groups([ParamSet(model.lm, lr_scale=float(t["lm_lr"]) / float(t["connector_lr"])),
                           ParamSet(model.connector)], float(t["weight_decay"]))
    optim = build_optimizer(groups, lr=float(t["connector_lr"]), betas=t["betas"])
    schedule = Schedule(optim, steps, min(int(t["warmup_iters"]), max(0, steps - 1)), float(t["min_lr"]))
    every = max(1, int(t.get("log_every", 50)))
    start_chunk, history = checkpointer.resume(model, optim, resume)
    trainable = [q for q in model.parameters() if q.requires_grad]
    n = len(samples)
    per_rank = bs // ctx.world_size
    micro = max(1, min(per_rank, int(t.get("micro_batch") or per_rank)))  # gradient accumulation within a step
    bar = Progress(steps - start_chunk * every, "instruction tuning", enabled=progress and ctx.is_main)
    losses: list[float] = []
    tokens, t0 = 0, time.perf_counter()
    for step in range(start_chunk * every, steps):
        # the global batch of this step: a fixed permutation per pass over the data, whatever the world size
        first = step * bs
        order = np.concatenate([epoch_permutation(n, seed, e) for e in range(first // n, (first + bs - 1) // n + 1)])
        offset = first - (first // n) * n
        mine = order[offset + ctx.rank * per_rank: offset + (ctx.rank + 1) * per_rank]
        batch = [samples[int(i)] for i in mine]
        # per-token mean over the global batch: each micro-batch's token sum / the global number of answer tokens
        n_tok = torch.tensor([float(sum(sum(lab != IGNORE_INDEX for lab in b[1][1:]) for b in batch))])
        all_reduce_sum(n_tok, ctx)
        schedule.set(step)
        optim.zero_grad(set_to_none=True)
        step_loss = 0.0
        for lo in range(0, len(batch), micro):
            part = batch[lo: lo + micro]
            ids = pad([b[0] for b in part], 0)
            labels = pad([b[1] for b in part], IGNORE_INDEX)
            mask = pad([[1] * len(b[0]) for b in part], 0)
            local = float((labels[:, 1:] != IGNORE_INDEX).sum())
            with autocast(ctx.device, p["precision"]):
                loss = net(ids.to(ctx.device), mask.to(ctx.device), labels.to(ctx.device), encode([b[2] for b in part]))
                loss = loss * local / max(float(n_tok), 1.0) * ctx.world_size
            check_finite(loss, step, "lower protocol.train.lm_lr / connector_lr or raise warmup_iters")
            loss.backward()
            step_loss += float(loss.detach())
            tokens += int(mask.sum())
        clip_grad(trainable, t.get("grad_clip"))
        optim.step()
        losses.append(step_loss / ctx.world_size)
        bar.update(1, loss=f"{losses[-1] * ctx.world_size:.3f}")
        if (step + 1) % every == 0 or step + 1 == steps:
            mean = torch.tensor([sum(losses), float(len(losses))], dtype=torch.float64)
            all_reduce_sum(mean, ctx)
            history.append(round(float(mean[0] / max(1.0, float(mean[1]) / ctx.world_size)), 5))
            losses = []
            if (step + 1) % every == 0 and ctx.is_main and not sharded:  # rank 0 holds only its shards
                checkpointer.save_epoch(model, optim, (step + 1) // every, history)
    bar.close()
    model.eval()
    seconds = max(time.perf_counter() - t0, 1e-9)
    return {"loss_history": history, "train_tokens_per_s": round(tokens * ctx.world_size / seconds, 1)}
