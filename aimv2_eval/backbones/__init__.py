"""The backbone adapter registry: any encoder, one contract (see `base.py`).

    backbone = create_backbone("aimv2-l")               # hub weights (cache, or download when online)
    backbone = create_backbone("timm:vit_small_patch16_224", pretrained=False)
    out = backbone.tokens(images)                      # TokenOutput: (B, N, D) tokens + grid
    transform = build_eval_transform(backbone.preprocess)

Family modules register on first use; heavy libraries (timm, open_clip) are imported only when a backbone of
theirs is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

# The AIMv2 family's helpers for checkpoint formats that embed an AIMv2 image tower (LiT); importing them registers
# the AIMv2 names early, which costs nothing (no heavy library).
from aimv2_eval.backbones.aimv2 import (
    aimv2_heads,
    aimv2_keys_from_apple,
    aimv2_keys_to_apple,
    backbone_from_state,
)
from aimv2_eval.backbones.base import (
    BACKBONES,
    RESOLVERS,
    Anatomy,
    Backbone,
    BackboneMeta,
    BackboneSpec,
    Embed,
    Preprocess,
    TokenOutput,
    WindowSpec,
    evenly_spaced_global_blocks,
    load_state_strict,
    weights_checksum,
)
from aimv2_eval.core.checkpoints import read_weights
from aimv2_eval.errors import UserError

__all__ = [
    "BACKBONES",
    "Anatomy",
    "Backbone",
    "BackboneMeta",
    "BackboneSpec",
    "Embed",
    "WindowSpec",
    "evenly_spaced_global_blocks",
    "Preprocess",
    "TokenOutput",
    "aimv2_heads",
    "aimv2_keys_from_apple",
    "aimv2_keys_to_apple",
    "backbone_from_state",
    "backbone_rows",
    "build_eval_transform",
    "create_backbone",
    "describe_backbone",
    "get_spec",
    "list_backbones",
    "read_weights",
    "load_state_strict",
    "weights_checksum",
]

# resolvers are tried in this order for names the registry does not hold
_FAMILIES = ("aimv2", "timm_vit", "checkpoint", "efficientnet", "open_clip")
_loaded = False


def _load_families() -> None:
    global _loaded
    if not _loaded:
        for module in _FAMILIES:
            importlib.import_module(f"aimv2_eval.backbones.{module}")
        _loaded = True


def get_spec(name: str) -> BackboneSpec:
    """The spec for a registered name or alias (case-insensitive fallback), or an open-ended name
    (`timm:<model>`, `<open_clip model>:<tag>`, `file:<path>` or a path)."""
    _load_families()
    if name in BACKBONES:
        return BACKBONES.get(name)
    folded = {n.lower(): n for n in [*BACKBONES, *(a for n in BACKBONES for a in BACKBONES.aliases_of(n))]}
    if name.lower() in folded:
        return BACKBONES.get(folded[name.lower()])
    for resolver in RESOLVERS:
        spec = resolver(name)
        if spec is not None:
            return spec
    raise UserError(BACKBONES.unknown_message(name))


def create_backbone(name: str, pretrained: bool = True, weights: str | None = None, trainable: bool = False,
                    drop_path_rate: float = 0.0, grad_checkpointing: bool = False) -> Backbone:
    """Build a backbone. pretrained=False: random weights, never a download. weights: a local directory, a file or a
    hub id replacing the default source.

    Frozen (eval mode, no gradients) by default; trainable=True leaves every parameter with gradients and the
    module in train mode, with stochastic depth up to `drop_path_rate` and optional activation checkpointing.
    """
    if not 0.0 <= drop_path_rate < 1.0:
        raise UserError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
    backbone = get_spec(name).build(pretrained=pretrained, weights=weights)
    if drop_path_rate or grad_checkpointing:
        backbone._vit()  # both act on ViT blocks: fail clearly for other families
    backbone.trainable = trainable
    backbone.drop_path_rate = float(drop_path_rate)
    backbone.grad_checkpointing = grad_checkpointing
    if trainable:
        return backbone.train().requires_grad_(True)
    return backbone.eval().requires_grad_(False)


def describe_backbone(name: str, weights: str | None = None) -> BackboneMeta:
    """The full metadata of a backbone (family, width, depth, patch size, native resolution) without loading
    weights: a random build on the meta device (a checkpoint on disk is read for its architecture only). A
    `weights` source is checked as the build would check it (for families that can without loading it)."""
    spec = get_spec(name)
    if weights is not None and spec.check_weights is not None:
        spec.check_weights(weights)  # a bad checkpoint fails here, before `run` loads any data
    with torch.device("meta"):
        return spec.build(pretrained=False, weights=weights).meta


def list_backbones(pattern: str | None = None) -> list[BackboneSpec]:
    """Registered backbones whose name or alias matches a glob pattern (case-insensitive)."""
    _load_families()
    return [BACKBONES.get(n) for n in BACKBONES.list(pattern)]


def count_params(spec: BackboneSpec) -> int:
    """Parameter count without allocating: a random build on the meta device."""
    if spec.params is not None:
        return spec.params
    with torch.device("meta"):
        return spec.build(pretrained=False).num_params


def backbone_rows(pattern: str | None = None, params: bool = True) -> list[dict]:
    """Rows for `aimv2-eval list backbones`: name, family, params, resolution, local weights, source, aliases."""
    rows = []
    for spec in list_backbones(pattern):
        rows.append(
            {
                "name": spec.name,
                "family": spec.family,
                "params": count_params(spec) if params else spec.params,
                "resolution": spec.resolution,
                "weights": bool(spec.weights_present()),
                "source": spec.source,
                "aliases": ", ".join(BACKBONES.aliases_of(spec.name)),
            }
        )
    return rows


# ---------------------------------------------------------------- eval transform
_INTERPOLATION = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


@dataclass(frozen=True)
class EvalTransform:
    """PIL image -> normalised (3, H, W) float tensor, as `Preprocess` says. Picklable for DataLoader workers."""

    preprocess: Preprocess

    def __call__(self, image) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        p = self.preprocess
        if not isinstance(image, Image.Image):
            raise UserError(f"expected a PIL image, got {type(image).__name__}; open images with PIL.Image.open")
        from aimv2_eval.data.images import to_rgb

        try:
            image = to_rgb(image)  # the one decoder of every path: 16-bit grey rescaled, not clipped to white
            image.load()
        except UserError:
            raise
        except Exception as exc:  # truncated or corrupt file
            raise UserError(f"cannot read image as RGB ({type(exc).__name__}: {exc}); re-encode or drop the file") from None
        mode = InterpolationMode(p.interpolation)
        if p.resize is not None:
            size = [p.resize, p.resize] if p.resize_mode == "squash" else p.resize
            image = F.resize(image, size, interpolation=mode)
        if p.crop:
            image = F.center_crop(image, [p.image_size, p.image_size])
        elif p.multiple_of > 1:
            w, h = image.size
            w2, h2 = w - w % p.multiple_of, h - h % p.multiple_of
            if not (w2 and h2):
                raise UserError(f"image {w}x{h} is smaller than one {p.multiple_of}px patch")
            image = image.crop((0, 0, w2, h2))
        return F.normalize(F.to_tensor(image), list(p.mean), list(p.std))


def build_eval_transform(preprocess: Preprocess) -> Callable:
    if preprocess.interpolation not in _INTERPOLATION:
        raise UserError(f"unknown interpolation {preprocess.interpolation!r}; choose one of {', '.join(_INTERPOLATION)}")
    return EvalTransform(preprocess)
