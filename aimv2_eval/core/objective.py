"""AIMv2's autoregressive objective: L = L_text + alpha * L_img (paper Section 2.1; alpha = 0.4, Table 9c)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def image_loss(pred: torch.Tensor, targets: torch.Tensor, prefix_len: torch.Tensor | None) -> torch.Tensor:
    """MSE of next-patch predictions, averaged over non-prefix patches only.

    pred: (B, I-1, P), pred[:, j] is the prediction of patch j+1; targets: (B, I, P) normalised patches;
    prefix_len: (B,) or None (then every predicted patch counts).
    """
    err = (pred.float() - targets[:, 1:].float()).pow(2).mean(dim=-1)  # (B, I-1)
    if prefix_len is None:
        return err.mean()
    patch_index = torch.arange(1, targets.shape[1], device=err.device)
    keep = (patch_index[None] >= prefix_len.to(err.device)[:, None]).float()
    return (err * keep).sum() / keep.sum().clamp_min(1.0)


def text_mask(tokens: torch.Tensor, eot_id: int) -> torch.Tensor:
    """True up to and including the first end-of-text token; the padding after it is False."""
    is_eot = tokens == eot_id
    return (is_eot.cumsum(dim=1) - is_eot.long()) == 0


def text_loss(logits: torch.Tensor, tokens: torch.Tensor, eot_id: int) -> torch.Tensor:
    """Next-token cross-entropy over caption tokens, padding ignored."""
    targets = tokens.masked_fill(~text_mask(tokens, eot_id), -100)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
