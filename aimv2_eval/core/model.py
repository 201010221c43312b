"""The AIMv2 pretraining model: encoder + multimodal decoder + objective, and the Table 9 ablation variants.

Objectives: `aimv2` (pixels + text), `cap` (text only), `aimv1` (pixels only) of Table 9a; `clip` (contrastive, with
a text tower, core/text_tower.py) and `cappa` (captioning with parallel prediction) of Table 9b.
Decoder layout (Table 9d): `joint` (one decoder for pixels and text) or `separate` (DecoderConfig.layout).
Encoder attention in pretraining: `prefix` (default, M ~ U{1..I-1}) or `bidirectional` (the Cap ablation); `clip`
always encodes whole images bidirectionally, as CLIP does (no patch is predicted, so a prefix means nothing there).
Loss reduction: `token` or `sample` (core/objective.py says which is which); the core default `token` keeps the
numbers of the first version, the recipes choose (configs/pretrain).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from aimv2_eval.core.decoder import DecoderConfig, build_decoder
from aimv2_eval.core.encoder import AIMv2Encoder, EncoderConfig
from aimv2_eval.core.objective import (
    REDUCTIONS,
    image_loss,
    normalize_patches,
    patchify,
    sample_parallel,
    sample_prefix_lengths,
    text_loss,
)
from aimv2_eval.core.text_tower import ContrastiveHead

OBJECTIVES = ("aimv2", "cap", "aimv1", "clip", "cappa")
CLIP_EOT_ID = 49407
# CapPa (Tschannen et al. 2023, Section 3; big_vision configs/proj/cappa/pretrain.py masked_pred_prob = 0.75,
# masking_ratio = 1.0): each sample is predicted in parallel with probability 0.75, else autoregressively.
CAPPA_PARALLEL_FRACTION = 0.75


@dataclass(frozen=True)
class AIMv2Config:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    objective: str = "aimv2"
    alpha: float = 0.4  # Table 9c: weight of the pixel loss (its convention: core/objective.py)
    encoder_attention: str = "prefix"
    eot_id: int = CLIP_EOT_ID
    loss_reduction: str = "token"  # token | sample (core/objective.py); recipes choose, see configs/pretrain
    parallel_fraction: float = CAPPA_PARALLEL_FRACTION  # cappa only

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.encoder_attention not in ("prefix", "bidirectional"):
            raise ValueError(f"encoder_attention must be 'prefix' or 'bidirectional', got {self.encoder_attention!r}")
        if self.loss_reduction not in REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {REDUCTIONS}, got {self.loss_reduction!r}")
        if self.decoder.layout == "separate" and self.objective != "aimv2":
            raise ValueError(f"separate decoders (Table 9d) split the pixel and text decoders of objective aimv2; "
                             f"objective {self.objective!r} has one decoder: use the joint layout")
        if not 0.0 <= self.parallel_fraction <= 1.0:
            raise ValueError(f"parallel_fraction must be in [0, 1], got {self.parallel_fraction}")

    @property
    def uses_pixels(self) -> bool:
        return self.objective in ("aimv2", "aimv1")

    @property
    def uses_text(self) -> bool:
        return self.objective in ("aimv2", "cap", "clip", "cappa")

    @property
    def contrastive(self) -> bool:
        """The loss compares the samples of a batch with each other: the batch must be one forward pass."""
        return self.objective == "clip"


class AIMv2(nn.Module):
    def __init__(self, cfg: AIMv2Config) -> None:
        super().__init__()
        self.cfg = cfg
        enc = cfg.encoder
        self.encoder = AIMv2Encoder(enc)
        if cfg.objective == "clip":
            self.clip = ContrastiveHead(enc, cfg.decoder, cfg.eot_id)
        else:
            patch_dim = enc.patch_size**2 * enc.in_chans
            self.decoder = build_decoder(cfg.decoder, enc.embed_dim, patch_dim, parallel=cfg.objective == "cappa")

    @property
    def head(self) -> nn.Module:
        """What pretraining trains beside the encoder: the decoder(s), or CLIP's pooling head and text tower."""
        return self.clip if self.cfg.objective == "clip" else self.decoder

    @property
    def head_file(self) -> str:
        """The exported file of `head`'s weights (core/pretrain.py export_model)."""
        return "clip_head.safetensors" if self.cfg.objective == "clip" else "decoder.safetensors"

    def _prefix(self, images: torch.Tensor, prefix_len: torch.Tensor | None,
                generator: torch.Generator | None) -> torch.Tensor | None:
        cfg = self.cfg
        if cfg.encoder_attention == "bidirectional" or cfg.objective == "clip":
            return None
        if prefix_len is None:
            p = cfg.encoder.patch_size
            num_patches = (images.shape[-2] // p) * (images.shape[-1] // p)
            prefix_len = sample_prefix_lengths(images.shape[0], num_patches, generator).to(images.device)
        return prefix_len

    def forward(
        self,
        images: torch.Tensor,
        text_tokens: torch.Tensor | None = None,
        prefix_len: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses for one batch: `loss` (what to minimise), `loss_img` and `loss_text` (0 when unused; for clip
        both are 0 and `loss` is the contrastive loss)."""
        cfg = self.cfg
        if cfg.uses_text and text_tokens is None:
            raise ValueError(f"objective {cfg.objective!r} needs caption tokens")
        prefix_len = self._prefix(images, prefix_len, generator)
        feats = self.encoder(images, prefix_len)
        zero = feats.new_zeros(())
        if cfg.objective == "clip":
            return {"loss": self.clip(feats, text_tokens), "loss_img": zero, "loss_text": zero}
        parallel = None
        if cfg.objective == "cappa":
            parallel = sample_parallel(images.shape[0], cfg.parallel_fraction, generator).to(images.device)
        pixels, logits = self.decoder(feats, text_tokens if cfg.uses_text else None, parallel=parallel)
        loss_img = zero
        if cfg.uses_pixels:
            targets = normalize_patches(patchify(images, cfg.encoder.patch_size))
            loss_img = image_loss(pixels, targets, prefix_len, cfg.loss_reduction)
        loss_text = zero
        if logits is not None and text_tokens is not None:
            loss_text = text_loss(logits, text_tokens, cfg.eot_id, cfg.loss_reduction)
        alpha = cfg.alpha if cfg.objective == "aimv2" else 1.0
        return {"loss": loss_text + alpha * loss_img, "loss_img": loss_img, "loss_text": loss_text}
