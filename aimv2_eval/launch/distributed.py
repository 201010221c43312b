"""In-process and torchrun execution: one `DistContext` says who we are; helpers reduce across ranks.

Under `torchrun --nproc_per_node N` the environment carries RANK / WORLD_SIZE / LOCAL_RANK; we join the process
group (NCCL on CUDA, gloo on CPU). With a world of one every helper is a no-op, so plugins call them unconditionally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from aimv2_eval.errors import UserError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' picks CUDA when present; a bare 'cuda' under torchrun means this process's local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for a GPU but torch sees none; use --device cpu")
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}; use auto, cpu, cuda or cuda:N") from None


def init_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun process group when launched by torchrun; otherwise a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum over ranks, in place and returned (a no-op with one process). CPU tensors take a trip through the GPU
    when the group is NCCL, which reduces device tensors only."""
    if ctx.distributed:
        work = tensor.to(ctx.device) if ctx.device.type == "cuda" and tensor.device != ctx.device else tensor
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        if work is not tensor:
            tensor.copy_(work)
    return tensor


def broadcast_object(obj, ctx: DistContext):
    """Rank 0's value on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(items: list[int], ctx: DistContext) -> list[int]:
    """This rank's share of a global batch: every world_size-th item, so that shares differ by at most one."""
    return items[ctx.rank :: ctx.world_size]


def gather_objects(obj, ctx: DistContext) -> list:
    """Every rank's value, in rank order (a list of one with one process)."""
    if not ctx.distributed:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
