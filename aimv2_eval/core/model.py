"""The AIMv2 pretraining model: encoder + multimodal decoder + objective, and the Table 9a ablation variants.

Objectives (Table 9a): `aimv2` (pixels + text), `cap` (text only), `aimv1` (pixels only).
Encoder attention in pretraining: `prefix` (default, M ~ U{1..I-1}) or `bidirectional` (the Cap ablation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from aimv2_eval.core.decoder import DecoderConfig, MultimodalDecoder
from aimv2_eval.core.encoder import AIMv2Encoder, EncoderConfig
from aimv2_eval.core.objective import image_loss, normalize_patches, patchify, sample_prefix_lengths, text_loss

OBJECTIVES = ("aimv2", "cap", "aimv1")
CLIP_EOT_ID = 49407


@dataclass(frozen=True)
class AIMv2Config:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    objective: str = "aimv2"
    alpha: float = 0.4  # Table 9c: weight of the pixel loss
    encoder_attention: str = "prefix"
    eot_id: int = CLIP_EOT_ID

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.encoder_attention not in ("prefix", "bidirectional"):
            raise ValueError(f"encoder_attention must be 'prefix' or 'bidirectional', got {self.encoder_attention!r}")

    @property
    def uses_pixels(self) -> bool:
        return self.objective in ("aimv2", "aimv1")

    @property
    def uses_text(self) -> bool:
        return self.objective in ("aimv2", "cap")


class AIMv2(nn.Module):
    def __init__(self, cfg: AIMv2Config) -> None:
        super().__init__()
        self.cfg = cfg
        enc = cfg.encoder
        self.encoder = AIMv2Encoder(enc)
        self.decoder = MultimodalDecoder(cfg.decoder, enc.embed_dim, enc.patch_size**2 * enc.in_chans)

    def forward(
        self,
        images: torch.Tensor,
        text_tokens: torch.Tensor | None = None,
        prefix_len: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses for one batch: `loss` (what to minimise), `loss_img` and `loss_text` (0 when unused)."""
        cfg = self.cfg
        if cfg.uses_text and text_tokens is None:
            raise ValueError(f"objective {cfg.objective!r} needs caption tokens")
        p = cfg.encoder.patch_size
        num_patches = (images.shape[-2] // p) * (images.shape[-1] // p)
        if cfg.encoder_attention == "prefix" and prefix_len is None:
            prefix_len = sample_prefix_lengths(images.shape[0], num_patches, generator).to(images.device)
        if cfg.encoder_attention == "bidirectional":
            prefix_len = None
        feats = self.encoder(images, prefix_len)
        pixels, logits = self.decoder(feats, text_tokens if cfg.uses_text else None)
        zero = feats.new_zeros(())
        loss_img = image_loss(pixels, normalize_patches(patchify(images, p)), prefix_len) if cfg.uses_pixels else zero
        loss_text = zero
        if logits is not None and text_tokens is not None:
            loss_text = text_loss(logits, text_tokens, cfg.eot_id)
        alpha = cfg.alpha if cfg.objective == "aimv2" else 1.0
        return {"loss": loss_text + alpha * loss_img, "loss_img": loss_img, "loss_text": loss_text}
