"""The AIMv2 vision encoder (paper Section 2.2): a ViT with no CLS token, SwiGLU and RMSNorm.

Patch embed (Conv2d) -> RMSNorm -> + position embedding -> pre-norm blocks -> final RMSNorm. Module names follow
Apple's released checkpoints (`preprocessor.patchifier.proj`, `trunk.blocks.N.attn.qkv`, ...), so that the
original key scheme is this module's own state dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from aimv2_eval.core.layers import Block, RMSNorm, prefix_attention_mask, swiglu_hidden_dim


@dataclass(frozen=True)
class EncoderConfig:
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 8
    mlp_hidden: int = 0  # 0 = the released rule, swiglu_hidden_dim(embed_dim)
    patch_size: int = 14
    image_size: int = 224  # the grid the learned position table was trained at
    in_chans: int = 3
    pos_embed: str = "learned"  # "learned" (resized bicubic) or "sincos" (native-resolution variant)
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.pos_embed not in ("learned", "sincos"):
            raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {self.pos_embed!r}")
        if not self.mlp_hidden:
            object.__setattr__(self, "mlp_hidden", swiglu_hidden_dim(self.embed_dim))

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)


def sincos_pos_embed(grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    """Parameter-free 2-D sin-cos table (grid_h * grid_w, dim), row-major, computed in fp32.

    Layout [sin(w) | cos(w) | sin(h) | cos(h)], as MAE's `get_2d_sincos_pos_embed` that the native AIMv2 used.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    hh, ww = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )
    out_w = ww.reshape(-1, 1) * omega
    out_h = hh.reshape(-1, 1) * omega
    return torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1).float()


def resize_pos_embed(table: torch.Tensor, old_grid: int, new_hw: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a learned (1, old_grid**2, D) table to (1, h*w, D), as timm does (antialiased)."""
    if (old_grid, old_grid) == new_hw:
        return table
    d = table.shape[-1]
    grid = table.reshape(1, old_grid, old_grid, d).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_hw, mode="bicubic", antialias=True, align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, -1, d).to(table.dtype)


class Patchifier(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)
        self.norm = RMSNorm(cfg.embed_dim, cfg.norm_eps)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(images)
        grid = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), grid


class Preprocessor(nn.Module):
    """Patches + position embedding, at any input size that is a multiple of the patch size."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patchifier = Patchifier(cfg)
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, cfg.grid**2, cfg.embed_dim)) if cfg.pos_embed == "learned" else None
        )
        self._sincos_cache: dict[tuple[int, int], torch.Tensor] = {}

    def position_embedding(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        if self.pos_embed is not None:
            return resize_pos_embed(self.pos_embed, self.cfg.grid, grid)
        key = grid
        if key not in self._sincos_cache:
            self._sincos_cache[key] = sincos_pos_embed(*grid, self.cfg.embed_dim)[None]
        return self._sincos_cache[key].to(device)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = images.shape[-2:]
        p = self.cfg.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        x, grid = self.patchifier(images)
        # Positions in the model's dtype, not the activations': under autocast, bf16 patches + fp32 positions give an
        # fp32 residual stream, as in Apple's and timm's models.
        return x + self.position_embedding(grid, x.device).to(self.patchifier.proj.weight.dtype), grid


class Trunk(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_hidden, cfg.norm_eps) for _ in range(cfg.depth)
        )
        self.post_trunk_norm = RMSNorm(cfg.embed_dim, cfg.norm_eps)


class AIMv2Encoder(nn.Module):
    """Returns all patch tokens (B, N, D) after the final norm; bidirectional unless given prefix lengths."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.preprocessor = Preprocessor(cfg)
        self.trunk = Trunk(cfg)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
        proj = self.preprocessor.patchifier.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        if proj.bias is not None:
            nn.init.zeros_(proj.bias)
        if self.preprocessor.pos_embed is not None:
            nn.init.normal_(self.preprocessor.pos_embed, std=0.02)

    def forward_features(
        self,
        images: torch.Tensor,
        prefix_len: torch.Tensor | None = None,
        layers: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], tuple[int, int]]:
        """Final tokens, the raw outputs of the requested blocks (negative indices allowed), and the grid."""
        x, grid = self.preprocessor(images)
        mask = None if prefix_len is None else prefix_attention_mask(prefix_len, x.shape[1])
        depth = len(self.trunk.blocks)
        wanted = {i % depth for i in layers} if layers else set()
        kept: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.trunk.blocks):
            x = block(x, mask)
            if i in wanted:
                kept[i] = x
        out = [kept[i % depth] for i in layers] if layers else []
        return self.trunk.post_trunk_norm(x), out, grid

    def forward(self, images: torch.Tensor, prefix_len: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_features(images, prefix_len)[0]
