"""Pretraining losses: AIMv2's autoregressive objective L = L_text + alpha * L_img (paper Section 2.1; alpha = 0.4,
Table 9c) and the contrastive loss of the CLIP comparison (Table 9b).

Conventions of L_img and L_text (where the code and the paper's formulas meet):
- Per patch, the pixel error is the *mean* of the squared errors over the patch's p*p*C normalised values (MAE's
  norm_pix_loss convention), not the squared L2 norm the formula writes, ||x_hat_i - x_i||^2, which is p*p*C = 588
  times larger at patch 14. With per-patch normalised targets both losses start near 1, which is what makes
  alpha = 0.4 (Table 9c) a balance between the two terms.
- Reduction (`reduction`): "sample" is the formula's 1/I sum_i and 1/T sum_t taken per sample (over its predicted,
  non-prefix patches and its caption tokens up to the first end-of-text), then the mean over the batch: every sample
  weighs the same. "token" averages over all kept patches (tokens) of the batch at once, so a sample with a short
  prefix (a long caption) weighs more; it is what the first version of this code did and what built the bundled
  aimv2-tiny. Under micro-batching only "sample" gives exactly the loss of the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REDUCTIONS = ("token", "sample")


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), patches row-major like the patch embedding, pixels (p, p, C) like MAE."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch mean/variance normalisation of the pixel targets, as MAE's norm_pix_loss."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def sample_prefix_lengths(batch: int, num_patches: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """M ~ U{1, ..., I-1} per sample (paper Section 2.2, prefix attention)."""
    return torch.randint(1, num_patches, (batch,), generator=generator)


def sample_parallel(batch: int, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """CapPa: which samples are predicted in parallel, each with probability `fraction` (big_vision draws per
    sample, not per batch)."""
    return torch.rand(batch, generator=generator) < fraction


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"loss reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _per_sample_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean over each row's kept entries, then over the rows (the formula's 1/I, 1/T per sample)."""
    keep = keep.to(values.dtype)
    return ((values * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)).mean()


def image_loss(pred: torch.Tensor, targets: torch.Tensor, prefix_len: torch.Tensor | None,
               reduction: str = "token") -> torch.Tensor:
    """Mean squared error of next-patch predictions over non-prefix patches (conventions: module docstring).

    pred: (B, I-1, P), pred[:, j] is the prediction of patch j+1; targets: (B, I, P) normalised patches;
    prefix_len: (B,) or None (then every predicted patch counts).
    """
    _check_reduction(reduction)
    err = (pred.float() - targets[:, 1:].float()).pow(2).mean(dim=-1)  # (B, I-1)
    if prefix_len is None:
        return err.mean()  # every sample has I-1 predicted patches: both reductions agree
    patch_index = torch.arange(1, targets.shape[1], device=err.device)
    keep = (patch_index[None] >= prefix_len.to(err.device)[:, None]).float()
    if reduction == "sample":
        return _per_sample_mean(err, keep)
    return (err * keep).sum() / keep.sum().clamp_min(1.0)


def text_mask(tokens: torch.Tensor, eot_id: int) -> torch.Tensor:
    """True up to and including the first end-of-text token; the padding after it is False."""
    is_eot = tokens == eot_id
    return (is_eot.cumsum(dim=1) - is_eot.long()) == 0


def text_loss(logits: torch.Tensor, tokens: torch.Tensor, eot_id: int, reduction: str = "token") -> torch.Tensor:
    """Next-token cross-entropy over caption tokens, padding ignored (conventions: module docstring)."""
    _check_reduction(reduction)
    keep = text_mask(tokens, eot_id)
    if reduction == "sample":
        nll = F.cross_entropy(logits.float().transpose(1, 2), tokens, reduction="none")  # (B, T)
        return _per_sample_mean(nll, keep)
    targets = tokens.masked_fill(~keep, -100)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over the batch's image-text pairs (Radford et al. 2021), on L2-normalised
    embeddings; pair i is the positive of row i and column i.

    Hand-written rather than open_clip's `ClipLoss` (identical in one process, tests/test_objectives.py compares
    them): importing open_clip costs seconds and the loss is two cross-entropies.
    """
    image_emb = F.normalize(image_emb.float(), dim=-1)
    text_emb = F.normalize(text_emb.float(), dim=-1)
    logits = logit_scale.float() * image_emb @ text_emb.t()
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
