"""In-process and torchrun execution: one `DistContext` says who we are; helpers reduce across ranks.

Under `torchrun --nproc_per_node N` the environment carries RANK / WORLD_SIZE / LOCAL_RANK; we join the process
group (NCCL on CUDA, gloo on CPU). With a world of one every helper is a no-op, so plugins call them unconditionally.
"""

from __future__ import annotations

import os
import re
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


DEVICES = "auto, cpu, cuda, cuda:N or mps"


def _use(flag: str, value: str) -> str:
    """How to set `flag` to `value`: `--device cpu` on a command line, `run.device=cpu` in a recipe override."""
    return f"{flag} {value}" if flag.startswith("-") else f"{flag}={value}"


def parse_device(name: str | None, flag: str = "--device") -> str:
    """The device name in canonical form, checked for spelling only (no hardware is looked at): a sweep plans
    cells for other machines. One of auto, cpu, cuda, cuda:N, mps."""
    text = "" if name is None else str(name).strip().lower()
    if not text:
        raise UserError(f"{flag} is empty; use {DEVICES}")
    if text in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise UserError(f"unknown {flag} {str(name)!r}; use {DEVICES}")


def resolve_device(name: str | None, local_rank: int = 0, flag: str = "--device") -> torch.device:
    """The torch device for `name`, checked against this machine: a missing GPU fails here, in one line, before
    any data or weights load. 'auto' picks CUDA when present; a bare 'cuda' under torchrun means this process's
    local GPU."""
    text = parse_device(name, flag)
    cuda = torch.cuda.is_available()
    if text == "auto":
        text = "cuda" if cuda else "cpu"
    if text.startswith("cuda"):
        if not cuda:
            build = "" if torch.version.cuda else ", a build without CUDA"
            raise UserError(f"{flag} {text} asks for a CUDA GPU but torch {torch.__version__}{build} sees none; "
                            f"use {_use(flag, 'cpu')}")
        index = local_rank if text == "cuda" else int(text.split(":")[1])
        count = torch.cuda.device_count()
        if index >= count:
            raise UserError(f"{flag} {text}: there is no cuda:{index}, torch sees {count} GPU(s) "
                            f"(cuda:0..cuda:{count - 1}); pick one of them or check CUDA_VISIBLE_DEVICES")
        return torch.device(f"cuda:{index}")
    if text == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            other = "cuda" if cuda else "cpu"
            raise UserError(f"{flag} mps asks for an Apple-silicon GPU (Metal), which this machine or torch build "
                            f"does not have; use {_use(flag, other)}")
    return torch.device(text)


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
