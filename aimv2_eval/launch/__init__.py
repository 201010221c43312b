"""Executors: in-process and torchrun (DDP). A Slurm executor would live beside them."""

from aimv2_eval.launch.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
    resolve_device,
    shard,
    shutdown,
)

__all__ = [
    "DistContext",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "init_distributed",
    "resolve_device",
    "shard",
    "shutdown",
]
