"""The causal multimodal decoder of AIMv2 pretraining (paper Section 2.2, Figure 1), and its Table 9 variants.

Input: [projected image features ; embedded text tokens], image first. Causal self-attention over the whole
sequence; two linear heads: the output at position j predicts token j+1 (a patch's pixels, then text tokens).

Variants:
- `layout="separate"` (Table 9d): two dedicated decoders of the same size, one for pixels (image features only) and
  one for text (image features then caption); `SeparateDecoders`.
- parallel prediction (CapPa, Tschannen et al. 2023, Table 9b): for the samples flagged `parallel`, every caption
  token is replaced by a learned mask token and the text positions attend to all positions, so each output at text
  position t predicts token t from the image alone (no causal text context); as big_vision's CapPa decoder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from aimv2_eval.core.layers import Block, RMSNorm, swiglu_hidden_dim

LAYOUTS = ("joint", "separate")


@dataclass(frozen=True)
class DecoderConfig:
    width: int = 1024  # Table 1: d_dec = 1024 for every AIMv2 variant
    depth: int = 12  # Table 1: L_dec = 12
    num_heads: int = 8
    vocab_size: int = 49408  # CLIP BPE
    max_text_len: int = 77  # CLIP context length: captions truncated to 77 tokens
    norm_eps: float = 1e-5
    layout: str = "joint"  # Table 9d: one joint decoder (AIMv2) or separate image and text decoders

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"decoder layout must be one of {LAYOUTS}, got {self.layout!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class MultimodalDecoder(nn.Module):
    """`pixels` / `text`: which heads (and text embeddings) to build; `parallel`: a mask token for CapPa."""

    def __init__(self, cfg: DecoderConfig, encoder_dim: int, patch_dim: int, pixels: bool = True, text: bool = True,
                 parallel: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_proj = nn.Linear(encoder_dim, cfg.width)
        if text:
            self.text_embed = nn.Embedding(cfg.vocab_size, cfg.width)
            # Image features carry the encoder's positions; text tokens get a learned table of their own.
            self.text_pos = nn.Parameter(torch.zeros(1, cfg.max_text_len, cfg.width))
        hidden = swiglu_hidden_dim(cfg.width)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.num_heads, hidden, cfg.norm_eps) for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.pixel_head = nn.Linear(cfg.width, patch_dim) if pixels else None
        self.text_head = nn.Linear(cfg.width, cfg.vocab_size, bias=False) if text else None
        if text:
            nn.init.normal_(self.text_pos, std=0.02)
            nn.init.normal_(self.text_embed.weight, std=0.02)
        # Created last, so that the other parameters draw the same initial values with or without it.
        self.mask_token = nn.Parameter(torch.randn(1, 1, cfg.width) * 0.02) if parallel else None

    def forward(
        self, image_feats: torch.Tensor, text_tokens: torch.Tensor | None = None,
        parallel: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Pixel predictions for patches 1..I-1 (B, I-1, P) and text logits for tokens 0..T-1 (B, T, V); None for a
        head this decoder lacks or text not given. `parallel` (B,) bool: samples predicted CapPa-style."""
        n_img = image_feats.shape[1]
        x = self.image_proj(image_feats)
        mask = None
        if text_tokens is not None:
            if self.text_head is None:
                raise ValueError("this decoder predicts pixels only; it takes no text")
            t = text_tokens.shape[1]
            if t > self.cfg.max_text_len:
                raise ValueError(f"text of {t} tokens exceeds the decoder's {self.cfg.max_text_len}")
            text = self.text_embed(text_tokens)
            if parallel is not None:
                if self.mask_token is None:
                    raise ValueError("this decoder was built without a mask token (parallel=True)")
                text = torch.where(parallel[:, None, None], self.mask_token.to(text.dtype), text)
                mask = _parallel_mask(parallel, n_img, n_img + t)
            x = torch.cat([x, text + self.text_pos[:, :t]], dim=1)
        for block in self.blocks:
            x = block(x, mask, is_causal=True)
        x = self.norm(x)
        pixels = self.pixel_head(x[:, : n_img - 1]) if self.pixel_head is not None else None
        logits = None
        if text_tokens is not None and self.text_head is not None:  # (a text-less decoder refused text above)
            hidden = x[:, n_img - 1 : -1]  # causal: position j predicts token j+1
            if parallel is not None:  # parallel: the mask token at text position t predicts token t
                hidden = torch.where(parallel[:, None, None], x[:, n_img:], hidden)
            logits = self.text_head(hidden)
        return pixels, logits


def _parallel_mask(parallel: torch.Tensor, n_img: int, n: int) -> torch.Tensor:
    """(B, 1, N, N) True = may attend: causal, except that text queries of parallel samples see every position."""
    idx = torch.arange(n, device=parallel.device)
    causal = idx[None, :] <= idx[:, None]
    text_query = (idx >= n_img)[:, None]
    return (causal[None] | (parallel[:, None, None] & text_query[None]))[:, None]


class SeparateDecoders(nn.Module):
    """Table 9d: a pixel decoder over the image features and a text decoder over [image features ; caption], each
    the size of the joint one (the paper does not give their sizes; ours: the same config twice)."""

    def __init__(self, cfg: DecoderConfig, encoder_dim: int, patch_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.image = MultimodalDecoder(cfg, encoder_dim, patch_dim, text=False)
        self.text = MultimodalDecoder(cfg, encoder_dim, patch_dim, pixels=False)

    def forward(
        self, image_feats: torch.Tensor, text_tokens: torch.Tensor | None = None,
        parallel: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if parallel is not None:
            raise ValueError("separate decoders do not predict in parallel (CapPa uses one text decoder)")
        pixels, _ = self.image(image_feats)
        logits = self.text(image_feats, text_tokens)[1] if text_tokens is not None else None
        return pixels, logits


def build_decoder(cfg: DecoderConfig, encoder_dim: int, patch_dim: int, parallel: bool = False) -> nn.Module:
    if cfg.layout == "separate":
        return SeparateDecoders(cfg, encoder_dim, patch_dim)
    return MultimodalDecoder(cfg, encoder_dim, patch_dim, parallel=parallel)
