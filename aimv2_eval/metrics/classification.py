"""Classification metrics: top-k accuracy from logits, kept as counts so that shards can be summed."""

from __future__ import annotations

import torch


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """Number of samples whose target is among the k highest logits, for each k.

    logits (B, C) -> (len(ks),); logits (B, G, C) for G heads at once -> (G, len(ks)). A k larger than the number of
    classes counts every sample (top-5 on a 2-class task is 100%).
    """
    squeeze = logits.dim() == 2
    if squeeze:
        logits = logits[:, None]
    kmax = min(max(ks), logits.shape[-1])
    top = logits.topk(kmax, dim=-1).indices  # (B, G, kmax)
    hit = top == targets[:, None, None]
    counts = torch.stack([hit[..., : min(k, kmax)].any(-1).sum(0) for k in ks], dim=-1)  # (G, len(ks))
    return counts[0] if squeeze else counts


def accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int = 1) -> float:
    """Top-k accuracy in percent (the unit of the paper's tables)."""
    if len(targets) == 0:
        raise ValueError("accuracy of an empty set")
    return 100.0 * float(topk_correct(logits, targets, (k,))[0]) / len(targets)
