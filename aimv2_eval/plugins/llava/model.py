"""LLaVA's architecture (paper Section 4.3, Table 7): a frozen registry vision tower, a 2-layer MLP connector with GELU
(LLaVA-1.5's `mlp2x_gelu`) and any `transformers` causal LM. Image tokens replace a run of placeholder ids in the
prompt, so the LM sees [text, image tokens, text] as one sequence of embeddings.

Tiling (Table C3): the image is padded to a square, resized to grid x crop pixels and cut into grid x grid crops in
reading order; each crop is encoded alone and the token sequences are concatenated (optionally after a thumbnail of
the whole image, a recorded task parameter).
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torch import nn

from aimv2_eval.data.images import to_rgb

IMAGE_TOKEN_ID = -200  # LLaVA's IMAGE_TOKEN_INDEX: a placeholder id no vocabulary uses, replaced by image tokens
IGNORE_INDEX = -100  # labels of prompt and image positions (no loss)


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Table C1's PadToSquare: pad the short side symmetrically with `fill` (LLaVA pads with the image mean)."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def tile(image: Image.Image, crop: int, grid: int, thumbnail: bool, fill: tuple[int, int, int]) -> list[Image.Image]:
    """PadToSquare, resize to grid * crop, and the grid x grid crops in reading order (a thumbnail first when asked);
    grid 1 is the plain PadToSquare + Resize of Table C1."""
    square = pad_to_square(to_rgb(image), fill)
    crops = [square.resize((crop, crop), Image.BICUBIC)] if thumbnail and grid > 1 else []
    big = square.resize((crop * grid, crop * grid), Image.BICUBIC)
    crops += [big.crop((c * crop, r * crop, (c + 1) * crop, (r + 1) * crop)) for r in range(grid) for c in range(grid)]
    return crops


class Connector(nn.Module):
    """LLaVA-1.5's projector: Linear -> GELU -> Linear, from the tower's width to the LM's."""

    def __init__(self, vision_dim: int, lm_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(vision_dim, lm_dim), nn.GELU(), nn.Linear(lm_dim, lm_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VisionTower(nn.Module):
    """A frozen registry backbone read at one block (LLaVA reads the penultimate: `layer: -2`), patch tokens only,
    before the final norm (the block's own output, as LLaVA reads CLIP's hidden states)."""

    def __init__(self, backbone: nn.Module, layer: int = -2) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.layer = layer
        self.dim = backbone.meta.embed_dim

    def train(self, mode: bool = True) -> VisionTower:  # frozen: always in eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, tokens, D)."""
        return self.backbone.forward_intermediates(crops, indices=[self.layer], norm=False, output_fmt="NLC")[0]


class LlavaModel(nn.Module):
    """Vision tower + connector + causal LM. Images arrive as features of their crops (computed once per image,
    frozen); `embed` splices them into the prompt's embeddings at the placeholder positions."""

    def __init__(self, tower: VisionTower, lm: nn.Module) -> None:
        super().__init__()
        self.tower = tower
        self.lm = lm
        self.connector = Connector(tower.dim, lm.get_input_embeddings().embedding_dim)

    def embed(self, input_ids: torch.Tensor, image_features: list[torch.Tensor | None]) -> torch.Tensor:
        """input_ids (B, L) with runs of IMAGE_TOKEN_ID; image_features[b] (tokens, D_vision) of sample b, as many
        tokens as its placeholders (None for a text-only sample)."""
        text = input_ids.clamp(min=0)  # placeholders read id 0, then are overwritten
        x = self.lm.get_input_embeddings()(text)
        slots = input_ids == IMAGE_TOKEN_ID
        if slots.any():
            feats = [f for f in image_features if f is not None]
            projected = self.connector(torch.cat(feats).to(x.dtype))
            if projected.shape[0] != int(slots.sum()):
                raise ValueError(f"{int(slots.sum())} image placeholders but {projected.shape[0]} image tokens")
            x = x.masked_scatter(slots.unsqueeze(-1), projected.to(x.dtype))
        elif self.training:  # a text-only batch still touches the connector, so every rank reduces the same tensors
            x = x + 0.0 * self.connector(x.new_zeros(1, self.tower.dim)).sum()
        return x

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                image_features: list[torch.Tensor | None]) -> torch.Tensor:
        """The LM loss on answer tokens (labels IGNORE_INDEX elsewhere)."""
        embeds = self.embed(input_ids, image_features)
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels).loss

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 image_features: list[torch.Tensor | None], **kwargs: Any) -> torch.Tensor:
        """Greedy continuation of left-padded prompts through transformers' `generate` (KV cache); returns only
        the new tokens."""
        embeds = self.embed(input_ids, image_features)
        return self.lm.generate(inputs_embeds=embeds, attention_mask=attention_mask, do_sample=False, **kwargs)
