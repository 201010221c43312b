"""The causal multimodal decoder of AIMv2 pretraining (paper Section 2.2, Figure 1).

Input: [projected image features ; embedded text tokens], image first. Causal self-attention over the whole
sequence; two linear heads: the output at position j predicts token j+1 (a patch's pixels, then text tokens).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from aimv2_eval.core.layers import Block, RMSNorm, swiglu_hidden_dim


@dataclass(frozen=True)
class DecoderConfig:
    width: int = 1024  # Table 1: d_dec = 1024 for every AIMv2 variant
    depth: int = 12  # Table 1: L_dec = 12
    num_heads: int = 8
    vocab_size: int = 49408  # CLIP BPE
    max_text_len: int = 77  # CLIP context length: captions truncated to 77 tokens
    norm_eps: float = 1e-5

    def to_dict(self) -> dict:
        return asdict(self)


class MultimodalDecoder(nn.Module):
    def __init__(self, cfg: DecoderConfig, encoder_dim: int, patch_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_proj = nn.Linear(encoder_dim, cfg.width)
        self.text_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        # Image features carry the encoder's positions; text tokens get a learned table of their own.
        self.text_pos = nn.Parameter(torch.zeros(1, cfg.max_text_len, cfg.width))
        hidden = swiglu_hidden_dim(cfg.width)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.num_heads, hidden, cfg.norm_eps) for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.pixel_head = nn.Linear(cfg.width, patch_dim)
        self.text_head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        nn.init.normal_(self.text_pos, std=0.02)
        nn.init.normal_(self.text_embed.weight, std=0.02)

    def forward(
        self, image_feats: torch.Tensor, text_tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pixel predictions for patches 1..I-1 (B, I-1, P) and text logits for tokens 0..T-1 (B, T, V)."""
        n_img = image_feats.shape[1]
        x = self.image_proj(image_feats)
        if text_tokens is not None:
            t = text_tokens.shape[1]
            if t > self.cfg.max_text_len:
                raise ValueError(f"text of {t} tokens exceeds the decoder's {self.cfg.max_text_len}")
            x = torch.cat([x, self.text_embed(text_tokens) + self.text_pos[:, :t]], dim=1)
        for block in self.blocks:
            x = block(x, is_causal=True)
        x = self.norm(x)
        pixels = self.pixel_head(x[:, : n_img - 1])
        logits = self.text_head(x[:, n_img - 1 : -1]) if text_tokens is not None else None
        return pixels, logits
