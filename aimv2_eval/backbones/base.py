"""The backbone contract: every encoder looks the same to every task (../DESIGN.md, "The backbone contract")."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from aimv2_eval.registry import Registry

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Eval-time preprocessing as the family publishes it.

    resize: shortest edge is resized to this (None: no resize); crop: centre crop to `image_size` (False: none).
    """

    image_size: int
    resize: int | None
    crop: bool = True
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD


@dataclass(frozen=True)
class BackboneMeta:
    name: str
    family: str
    embed_dim: int
    depth: int
    patch_size: int  # for a CNN: the stride of its feature map
    image_size: int  # native resolution
    any_resolution: bool
    num_prefix_tokens: int  # CLS / register tokens emitted before the patch tokens
    is_vit: bool = True


@dataclass
class TokenOutput:
    tokens: torch.Tensor  # (B, N, D) final patch tokens after the final norm, prefix tokens removed
    grid: tuple[int, int]  # (h, w) with h * w == N
    prefix: torch.Tensor | None = None  # (B, P, D) CLS / registers, after the final norm
    layers: list[torch.Tensor] = field(default_factory=list)  # requested blocks' raw outputs, (B, N, D), no prefix


@dataclass
class Anatomy:
    """A ViT taken apart, so that dense tasks can run the blocks themselves (windowed attention, 1024px).

    embed(images) -> (tokens (B, P+N, D) with positions added and prefix tokens first, grid (h, w));
    each block maps (B, L, D) -> (B, L, D); norm is the final norm.
    """

    embed: Callable[[torch.Tensor], tuple[torch.Tensor, tuple[int, int]]]
    blocks: Sequence[nn.Module]
    norm: nn.Module
    num_prefix_tokens: int

    def run(self, images: torch.Tensor) -> torch.Tensor:
        x, _ = self.embed(images)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, self.num_prefix_tokens :]


class Backbone(nn.Module, abc.ABC):
    """A frozen image encoder. Subclasses set `meta`, `preprocess`, `weights_id` and implement `tokens`."""

    meta: BackboneMeta
    preprocess: Preprocess
    weights_id: str = "random"  # checksum or description of the loaded weights, recorded with every result

    @abc.abstractmethod
    def tokens(self, images: torch.Tensor, layers: Sequence[int] | None = None) -> TokenOutput:
        """Patch tokens of normalised images (B, 3, H, W)."""

    def anatomy(self) -> Anatomy | None:
        """The ViT anatomy, or None for families that are not ViTs."""
        return None

    def train_transform(self, transform: Callable | None = None) -> Callable | None:
        """Hook for train-time augmentation; tasks pass their own (for example timm's RandAugment pipeline)."""
        return transform

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry: enough to list a backbone without building it, and a factory to build it.

    build(pretrained, weights) -> Backbone: pretrained=False gives random weights and never downloads;
    weights overrides the source (a local directory, a file or a hub id).
    """

    name: str
    family: str
    resolution: int
    build: Callable[..., Backbone]
    source: str = ""  # hub id, package or path where the real weights come from
    weights_present: Callable[[], bool] = lambda: False
    params: int | None = None  # known parameter count, if cheap to state


BACKBONES: Registry[BackboneSpec] = Registry("backbone")
