"""timm ViTs behind the contract: DINOv2 (S/B/L/g, Table 3's ViT-g/14), MAE (B/L/H) and any timm ViT by name
(`timm:<model>[.<tag>]`).

Preprocessing is timm's pretrained config (input size, crop_pct, interpolation, mean, std). Weights come from the
Hugging Face cache (or a download when online) and go through timm's own `checkpoint_filter_fn`, so original
DINOv2 / MAE checkpoints load as well as timm's. `TimmViT` also serves open_clip's timm-based towers (SigLIP).
"""

from __future__ import annotations

import difflib
import math
from functools import partial
from pathlib import Path

import torch
from torch import nn

from aimv2_eval.backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Anatomy,
    Backbone,
    BackboneMeta,
    BackboneSpec,
    Embed,
    Preprocess,
    hf_cached,
    hf_download,
    missing_weights,
    register,
    register_resolver,
    weights_checksum,
)
from aimv2_eval.errors import UserError

HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
LOCAL_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class TimmViT(Backbone):
    """A timm `VisionTransformer`. Positions are resampled (bicubic, as timm's dynamic_img_size does) for any input
    size that is a multiple of the patch size; CLS and register tokens are the prefix."""

    def __init__(self, model: nn.Module, name: str, family: str, preprocess: Preprocess, weights_id: str = "random") -> None:
        from timm.models.vision_transformer import VisionTransformer

        super().__init__()
        if not isinstance(model, VisionTransformer):
            raise UserError(f"{name}: timm model {type(model).__name__} is not a VisionTransformer; pick a ViT")
        self.model = model
        self.preprocess = preprocess
        self.weights_id = weights_id
        # Parts a token forward never uses are dropped (DDP then needs no find_unused_parameters): the classifier
        # and the attention-pool head (SigLIP's MAP) read pooled features, not tokens.
        model.head = nn.Identity()
        if getattr(model, "attn_pool", None) is not None:
            model.attn_pool = None
        # Average-pool models put their final norm after pooling (fc_norm); the tokens get that norm.
        if not isinstance(model.norm, nn.Identity):
            model.fc_norm = nn.Identity()
        pe = model.patch_embed
        self.meta = BackboneMeta(
            name=name,
            family=family,
            embed_dim=model.embed_dim,
            depth=len(model.blocks),
            patch_size=pe.patch_size[0],
            image_size=pe.img_size[0],
            any_resolution=False,
            num_prefix_tokens=model.num_prefix_tokens,
        )

    @property
    def final_norm(self) -> nn.Module:
        m = self.model
        return m.fc_norm if isinstance(m.norm, nn.Identity) else m.norm

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patches + positions (resampled to the input grid) + prefix tokens, then timm's pre-norm."""
        from timm.layers import resample_abs_pos_embed

        m = self.model
        x = m.patch_embed.proj(images)
        grid = (x.shape[-2], x.shape[-1])
        x = m.patch_embed.norm(x.flatten(2).transpose(1, 2))
        prefix = [t.expand(x.shape[0], -1, -1) for t in (m.cls_token, m.reg_token) if t is not None]
        if m.pos_embed is None:
            x = torch.cat([*prefix, x], dim=1)
        else:
            pos = m.pos_embed
            if grid != tuple(m.patch_embed.grid_size):
                n_pre = 0 if m.no_embed_class else m.num_prefix_tokens
                pos = resample_abs_pos_embed(pos, new_size=grid, old_size=m.patch_embed.grid_size, num_prefix_tokens=n_pre)
            if m.no_embed_class:  # positions cover the patches only: add, then prepend the prefix
                x = torch.cat([*prefix, x + pos], dim=1)
            else:
                x = torch.cat([*prefix, x], dim=1) + pos
        x = m.norm_pre(m.patch_drop(m.pos_drop(x)))
        return x, grid

    def anatomy(self) -> Anatomy:
        m = self.model
        parts = {"patch_embed": m.patch_embed, "cls_token": m.cls_token, "reg_token": m.reg_token,
                 "pos_embed": m.pos_embed, "norm_pre": m.norm_pre}
        return Anatomy(Embed(self.embed, parts), m.blocks, self.final_norm, self.meta.num_prefix_tokens)


def timm_preprocess(cfg: dict) -> Preprocess:
    """timm's pretrained config -> Preprocess (resize = floor(size / crop_pct), as timm's eval transform)."""
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    squash = cfg.get("crop_mode") == "squash"
    return Preprocess(
        image_size=size,
        resize=size if squash else math.floor(size / crop_pct),
        crop=not squash,
        interpolation=cfg.get("interpolation") or "bicubic",
        mean=tuple(cfg.get("mean") or IMAGENET_MEAN),
        std=tuple(cfg.get("std") or IMAGENET_STD),
        resize_mode="squash" if squash else "shortest",
    )


def _pretrained_cfg(model_name: str) -> dict:
    import timm

    cfg = timm.get_pretrained_cfg(model_name, allow_unregistered=True)
    return cfg.to_dict() if cfg is not None else {}


def _hub_files(cfg: dict) -> tuple[str, ...]:
    return (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else HUB_WEIGHT_FILES


def timm_weights_present(model_name: str) -> bool:
    cfg = _pretrained_cfg(model_name)
    return bool(cfg.get("hf_hub_id")) and hf_cached(cfg["hf_hub_id"], _hub_files(cfg)) is not None


def _local_weights(weights: str) -> Path | None:
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        found = [path / f for f in LOCAL_WEIGHT_FILES if (path / f).is_file()]
        if not found:
            raise UserError(f"no weights in {path}: expected one of {', '.join(LOCAL_WEIGHT_FILES)}")
        return found[0]
    return None


def resolve_timm_weights(name: str, model_name: str, weights: str | None) -> Path:
    """A local weights file for a timm model: `weights` (file, directory or hub id), else the cache, else a download
    when online. Absent offline -> one UserError saying how to provide it."""
    cfg = _pretrained_cfg(model_name)
    files: tuple[str, ...]
    if weights is not None:
        local = _local_weights(weights)
        if local is not None:
            return local
        repo_id, files = weights, HUB_WEIGHT_FILES
    elif cfg.get("hf_hub_id"):
        repo_id, files = cfg["hf_hub_id"], _hub_files(cfg)
    else:
        raise UserError(f"{name}: timm publishes no hub weights for {model_name!r}; pass weights=<file or directory>")
    cached = hf_cached(repo_id, files)
    if cached is not None:
        return cached
    downloaded = hf_download(repo_id, files)
    if downloaded is None:
        raise missing_weights(name, repo_id, files, "weights=<a local file or a directory holding model.safetensors>")
    return downloaded


def build_timm(
    name: str, model_name: str, family: str, pretrained: bool = True, weights: str | None = None
) -> TimmViT:
    import timm

    pre = timm_preprocess(_pretrained_cfg(model_name))
    if not pretrained:
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
        return TimmViT(model.eval(), name, family, pre)
    path = resolve_timm_weights(name, model_name, weights)
    try:
        model = timm.create_model(model_name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(path)})
    except Exception as exc:  # wrong architecture or corrupt file
        raise UserError(f"cannot load {path} into timm's {model_name} ({type(exc).__name__}: {exc})") from None
    return TimmViT(model.eval(), name, family, pre, weights_checksum(path))


# ---------------------------------------------------------------- registered names (Table 3 baselines and kin)
# name -> (timm model.tag, timm's input size for it); sizes are stated so that registering does not import timm
# (the tests check them against the built models)
_NAMED = {
    "dinov2-vit-s-14": ("vit_small_patch14_dinov2.lvd142m", 518),
    "dinov2-vit-b-14": ("vit_base_patch14_dinov2.lvd142m", 518),
    "dinov2-vit-l-14": ("vit_large_patch14_dinov2.lvd142m", 518),
    "dinov2-vit-g-14": ("vit_giant_patch14_dinov2.lvd142m", 518),
    "mae-vit-b-16": ("vit_base_patch16_224.mae", 224),
    "mae-vit-l-16": ("vit_large_patch16_224.mae", 224),
    "mae-vit-h-14": ("vit_huge_patch14_224.mae", 224),
}


def _timm_spec(name: str, model_name: str, family: str, resolution: int, source: str) -> BackboneSpec:
    return BackboneSpec(
        name=name,
        family=family,
        resolution=resolution,
        build=partial(build_timm, name, model_name, family),
        source=source,
        weights_present=partial(timm_weights_present, model_name),
        description=f"timm {model_name}",
    )


for _name, (_model, _res) in _NAMED.items():
    register(_timm_spec(_name, _model, _name.split("-")[0], _res, f"timm/{_model}"))


@register_resolver
def resolve_timm(name: str) -> BackboneSpec | None:
    """`timm:<model>[.<tag>]`: any timm ViT (e.g. timm:vit_small_patch16_224.augreg_in21k)."""
    if not name.startswith("timm:"):
        return None
    import timm

    model_name = name.removeprefix("timm:")
    if not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name, timm.list_models("vit*"), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join('timm:' + c for c in close)}?" if close else "see timm.list_models('vit*')"
        raise UserError(f"unknown timm model {model_name!r}; {hint}")
    cfg = _pretrained_cfg(model_name)
    resolution = int(cfg.get("input_size", (3, 224, 224))[-1])
    return _timm_spec(name, model_name, "timm", resolution, cfg.get("hf_hub_id") or model_name)
