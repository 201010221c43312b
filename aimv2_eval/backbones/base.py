"""The backbone contract: every encoder looks the same to every task (../DESIGN.md, "The backbone contract").

Family modules (aimv2, open_clip, timm_vit, checkpoint, efficientnet) register `BackboneSpec`s in `BACKBONES` and,
for open-ended names such as `timm:<model>` or a path on disk, a resolver in `RESOLVERS`. Shared loading helpers
(Hugging Face cache look-ups, weight checksums) live here so that each family module stays about its family.
"""

from __future__ import annotations

import abc
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from aimv2_eval.errors import UserError
from aimv2_eval.registry import Registry

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # SigLIP, EfficientNet-Lite


@dataclass(frozen=True)
class Preprocess:
    """Eval-time preprocessing as the family publishes it.

    resize: target of the resize (None: no resize); resize_mode "shortest" resizes the shortest edge to `resize`
    keeping the aspect ratio, "squash" resizes both edges to `resize`. crop: centre crop to `image_size` (False:
    none). multiple_of: with no crop, the right/bottom edges are trimmed to a multiple of this (what a strided patch
    convolution does by itself), so any-resolution encoders get every pixel they can use.
    """

    image_size: int
    resize: int | None
    crop: bool = True
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    resize_mode: str = "shortest"
    multiple_of: int = 1

    def __post_init__(self) -> None:
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize_mode must be 'shortest' or 'squash', got {self.resize_mode!r}")


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

    embed(images) -> (tokens (B, P+N, D) with positions added (interpolated to the input size) and prefix tokens
    first, grid (h, w)); each block maps (B, L, D) -> (B, L, D); norm is the final norm.
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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokens(images).tokens

    def anatomy(self) -> Anatomy | None:
        """The ViT anatomy, or None for families that are not ViTs."""
        return None

    def train_transform(self, transform: Callable | None = None) -> Callable | None:
        """Hook for train-time augmentation; tasks pass their own (for example timm's RandAugment pipeline)."""
        return transform

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def check_images(self, images: torch.Tensor) -> torch.Tensor:
        """Validate (B, 3, H, W) images; for ViTs trim the right/bottom edges to a multiple of the patch size, which
        is what a strided patch convolution does by itself (SigLIP So400m/14 takes 384 px as 27 x 27 patches)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise UserError(f"{self.meta.name} expects images shaped (B, 3, H, W), got {tuple(images.shape)}")
        p = self.meta.patch_size
        h, w = images.shape[-2:]
        if h < p or w < p:
            raise UserError(f"{self.meta.name}: image size {h}x{w} is smaller than one {p}px patch")
        if self.meta.is_vit and (h % p or w % p):
            images = images[..., : h - h % p, : w - w % p]
        return images


def layer_indices(layers: Sequence[int] | None, depth: int) -> list[int]:
    """Block indices in [0, depth) for requested layers (negative indices count from the end)."""
    if not layers:
        return []
    out = []
    for i in layers:
        if not -depth <= i < depth:
            raise UserError(f"layer {i} does not exist: the backbone has {depth} blocks (use 0..{depth - 1} or -1..-{depth})")
        out.append(i % depth)
    return out


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry: enough to list a backbone without building it, and a factory to build it.

    build(pretrained, weights) -> Backbone: pretrained=False gives random weights and never downloads;
    weights overrides the source (a local directory, a file or a hub id). Under `with torch.device("meta")` a
    random build allocates nothing, which is how parameter counts of the 1B-3B models are listed.
    """

    name: str
    family: str
    resolution: int
    build: Callable[..., Backbone]
    source: str = ""  # hub id, package or path where the real weights come from
    weights_present: Callable[[], bool] = lambda: False
    params: int | None = None  # known parameter count, if cheap to state
    aliases: tuple[str, ...] = ()
    description: str = ""


BACKBONES: Registry[BackboneSpec] = Registry("backbone")

Resolver = Callable[[str], BackboneSpec | None]
RESOLVERS: list[Resolver] = []
"""Open-ended names (`timm:<model>`, `<open_clip model>:<tag>`, `file:<path>`): each resolver returns a spec for a
name it understands, else None."""


def register(spec: BackboneSpec) -> BackboneSpec:
    return BACKBONES.register(spec.name, spec, spec.aliases)


def register_resolver(resolver: Resolver) -> Resolver:
    RESOLVERS.append(resolver)
    return resolver


# ---------------------------------------------------------------- loading helpers shared by the families
def hub_offline() -> bool:
    """True when Hugging Face downloads are switched off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hf_cached(repo_id: str, filenames: Sequence[str]) -> Path | None:
    """The first of `filenames` that sits in the local Hugging Face cache for `repo_id`, without any network call."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        try:
            hit = try_to_load_from_cache(repo_id, filename)
        except Exception:  # malformed repo id: not cached
            return None
        if isinstance(hit, str):
            return Path(hit)
    return None


def hf_download(repo_id: str, filenames: Sequence[str]) -> Path | None:
    """Download the first of `filenames` the hub repo has; None when offline or unreachable. One listing call first:
    it fails at once without network, where a file download would retry with back-off for half a minute."""
    if hub_offline():
        return None
    from huggingface_hub import HfApi, hf_hub_download

    try:
        available = {s.rfilename for s in HfApi().model_info(repo_id).siblings or []}
    except Exception:  # no network, unknown repo, gated repo
        return None
    for filename in filenames:
        if filename in available:
            try:
                return Path(hf_hub_download(repo_id, filename))
            except Exception:
                return None
    return None


def weights_checksum(path: Path) -> str:
    """sha256 of a weights file. Files in the Hugging Face cache are named by it already (LFS blobs), so big
    checkpoints are not re-read; anything else is hashed."""
    path = Path(path)
    if path.is_symlink():
        blob = path.resolve()
        if blob.parent.name == "blobs" and len(blob.name) == 64:
            return f"sha256:{blob.name}"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def missing_weights(what: str, repo_id: str, filenames: Sequence[str], local: str) -> UserError:
    """The one-line error for weights that are neither cached nor downloadable."""
    files = " ".join(filenames[:1])
    return UserError(
        f"weights for {what} are not available offline (not in the Hugging Face cache: {repo_id}); "
        f"run `hf download {repo_id} {files}` where there is network, or pass {local}"
    )
