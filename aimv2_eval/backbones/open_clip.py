"""open_clip image towers behind the contract: the paper's contrastive baselines (Tables 3, 4, 7) and any
`model:pretrained` pair open_clip knows (`open_clip:<model>[:<tag>]` or `<model>:<tag>`).

open_clip's own ViTs (OpenAI CLIP, DFN-CLIP) are wrapped by `OpenCLIPViT`; its timm-based towers (SigLIP) are timm
ViTs and reuse `TimmViT`. Only the image tower is kept. Preprocessing and QuickGELU come from the tag's pretrained
config, so a random build has exactly the architecture of the published weights.
"""

from __future__ import annotations

import contextlib
import logging
import os
from functools import partial
from pathlib import Path

import torch
from torch import nn

from aimv2_eval.backbones.base import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
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
from aimv2_eval.logs import quiet

HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class OpenCLIPViT(Backbone):
    """open_clip's `VisionTransformer`: class token first, ln_pre before the blocks, ln_post as the final norm."""

    def __init__(self, visual: nn.Module, name: str, family: str, preprocess: Preprocess, weights_id: str = "random") -> None:
        from open_clip.transformer import VisionTransformer

        super().__init__()
        if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None:
            raise UserError(f"{name}: only plain open_clip ViT towers are supported (not {type(visual).__name__} / attentional pooling)")
        if not visual.transformer.batch_first:
            raise UserError(f"{name}: open_clip tower is not batch-first; upgrade open-clip-torch")
        visual.proj = None  # the image-text projection reads the pooled token, never the patch tokens
        for block in visual.transformer.resblocks:
            block.attn.register_forward_pre_hook(sequence_first_in_memory, with_kwargs=True)
        self.visual = visual
        self.preprocess = preprocess
        self.weights_id = weights_id
        self.meta = BackboneMeta(
            name=name,
            family=family,
            embed_dim=visual.conv1.out_channels,
            depth=len(visual.transformer.resblocks),
            patch_size=visual.patch_size[0],
            image_size=visual.image_size[0],
            any_resolution=False,
            num_prefix_tokens=1,
        )

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Class token + patches, positions resampled (bicubic) to the input grid, then ln_pre."""
        from timm.layers import resample_abs_pos_embed

        v = self.visual
        x = v.conv1(images)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        pos = v.positional_embedding[None]
        if grid != tuple(v.grid_size):
            pos = resample_abs_pos_embed(pos, new_size=grid, old_size=v.grid_size, num_prefix_tokens=1)
        x = torch.cat([cls, x], dim=1) + pos.to(x.dtype)
        return v.ln_pre(v.patch_dropout(x)), grid

    def anatomy(self) -> Anatomy:
        v = self.visual
        parts = {"conv1": v.conv1, "class_embedding": v.class_embedding, "positional_embedding": v.positional_embedding,
                 "ln_pre": v.ln_pre}
        return Anatomy(Embed(self.embed, parts), v.transformer.resblocks, v.ln_post, 1)


def sequence_first_in_memory(attn: nn.MultiheadAttention, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook of open_clip's attention: under autocast, batch-first self-attention input is handed over laid
    out sequence-first in memory (same values, same math).

    Why: under autocast nn.MultiheadAttention leaves its fused path and transposes batch-first input itself; on the
    CPU the in-projection of that non-contiguous (L, B, D) view runs as one GEMM per position on a copy of the weight
    (ViT-B/16 in bf16: 14 s instead of 0.3 s for 2 images). Transposing a sequence-first layout is contiguous, and the
    projection is one GEMM. Without autocast (the fused path) the input is left as it is.
    """
    query, key, value = args[:3] if len(args) >= 3 else (None, None, None)
    if query is None or not (attn.batch_first and query is key is value and torch.is_autocast_enabled(query.device.type)):
        return None
    x = query.transpose(0, 1).contiguous().transpose(0, 1)
    return (x, x, x, *args[3:]), kwargs


def _quiet() -> contextlib.AbstractContextManager:
    """open_clip logs a warning on the root logger for every random build; a random build is what we asked for."""
    return quiet(logging.getLogger(), logging.ERROR)


def open_clip_preprocess(visual_cfg: dict, tag_cfg: dict) -> Preprocess:
    cfg = {**visual_cfg, **{k: v for k, v in tag_cfg.items() if k in ("mean", "std", "interpolation", "resize_mode")}}
    size = cfg.get("size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    squash = cfg.get("resize_mode") == "squash"
    return Preprocess(
        image_size=size,
        resize=size,
        crop=not squash,  # "shortest" (and "longest", approximated): shortest-edge resize + centre crop
        interpolation=cfg.get("interpolation") or "bicubic",
        mean=tuple(cfg.get("mean") or OPENAI_CLIP_MEAN),
        std=tuple(cfg.get("std") or OPENAI_CLIP_STD),
        resize_mode="squash" if squash else "shortest",
    )


def _hub_source(tag_cfg: dict) -> tuple[str, tuple[str, ...]] | None:
    """(repo id, candidate file names) from open_clip's `hf_hub` field, 'org/repo/' or 'org/repo/file'."""
    hub = tag_cfg.get("hf_hub") or ""
    if not hub:
        return None
    parts = hub.split("/")
    filename = "/".join(parts[2:])
    return "/".join(parts[:2]), ((filename,) if filename else HUB_WEIGHT_FILES)


def _url_cache(tag_cfg: dict) -> Path | None:
    url = tag_cfg.get("url") or ""
    path = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url) if url else None
    return path if path is not None and path.is_file() else None


def open_clip_weights_present(model: str, tag: str) -> bool:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag)
    hub = _hub_source(cfg)
    return (hub is not None and hf_cached(*hub) is not None) or _url_cache(cfg) is not None


def resolve_open_clip_weights(name: str, model: str, tag: str | None, weights: str | None) -> Path:
    """A local weights file: `weights` (file, directory or hub id), else the cache, else a download when online."""
    import open_clip

    local_hint = "weights=<a local file or a directory holding open_clip_model.safetensors>"
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            found = [path / f for f in HUB_WEIGHT_FILES if (path / f).is_file()]
            if not found:
                raise UserError(f"no weights in {path}: expected one of {', '.join(HUB_WEIGHT_FILES)}")
            return found[0]
        hub: tuple[str, tuple[str, ...]] | None = (weights, HUB_WEIGHT_FILES)
        cfg: dict = {}
    else:
        cfg = open_clip.get_pretrained_cfg(model, tag) if tag else {}
        if not cfg:
            tags = open_clip.list_pretrained_tags_by_model(model)
            raise UserError(f"{name}: open_clip has no weights {tag!r} for {model}; known tags: {', '.join(tags) or 'none'}")
        hub = _hub_source(cfg)
        cached = _url_cache(cfg)
        if cached is not None:
            return cached
    if hub is None:
        raise UserError(f"{name}: weights are only published at {cfg.get('url')}; download them and pass weights=<file>")
    cached_hub = hf_cached(*hub)
    if cached_hub is not None:
        return cached_hub
    downloaded = hf_download(*hub)
    if downloaded is None:
        raise missing_weights(name, hub[0], hub[1], local_hint)
    return downloaded


def build_open_clip(
    name: str, model: str, tag: str | None, family: str, pretrained: bool = True, weights: str | None = None
) -> Backbone:
    import open_clip

    from aimv2_eval.backbones.timm_vit import TimmViT

    tag_cfg = open_clip.get_pretrained_cfg(model, tag) if tag else {}
    quick_gelu = bool(tag_cfg.get("quick_gelu"))
    weights_id = "random"
    with _quiet():
        if not pretrained:
            clip = open_clip.create_model(model, pretrained=None, force_quick_gelu=quick_gelu, device=torch.get_default_device())
        else:
            path = resolve_open_clip_weights(name, model, tag, weights)
            try:
                clip = open_clip.create_model(model, pretrained=str(path), force_quick_gelu=quick_gelu)
            except Exception as exc:  # wrong architecture or corrupt file
                raise UserError(f"cannot load {path} into open_clip's {model} ({type(exc).__name__}: {exc})") from None
            weights_id = weights_checksum(path)
    visual = clip.visual.eval()
    pre = open_clip_preprocess(getattr(visual, "preprocess_cfg", {}) or {}, tag_cfg)
    if hasattr(visual, "trunk"):  # open_clip's TimmModel: a timm ViT inside (SigLIP)
        return TimmViT(visual.trunk, name, family, pre, weights_id)
    return OpenCLIPViT(visual, name, family, pre, weights_id)


def _spec(name: str, model: str, tag: str | None, family: str, resolution: int, description: str = "") -> BackboneSpec:
    return BackboneSpec(
        name=name,
        family=family,
        resolution=resolution,
        build=partial(build_open_clip, name, model, tag, family),
        source=f"open_clip {model}:{tag}" if tag else f"open_clip {model}",
        weights_present=partial(open_clip_weights_present, model, tag) if tag else (lambda: False),
        description=description or f"open_clip {model} {tag or '(random only)'}",
    )


# The paper's baselines: OAI CLIP ViT-L/14 (Tables 3, 7: 224 and 336 px), DFN-CLIP ViT-L/14 and ViT-H/14 (Table 3),
# SigLIP ViT-L/16 and So400m/14 (Tables 3, 7).
_NAMED = {
    "openai-clip-vit-l-14": ("ViT-L-14", "openai", "openai-clip", 224),
    "openai-clip-vit-l-14-336": ("ViT-L-14-336", "openai", "openai-clip", 336),
    "dfn-clip-vit-l-14": ("ViT-L-14", "dfn2b", "dfn-clip", 224),
    "dfn-clip-vit-h-14": ("ViT-H-14", "dfn5b", "dfn-clip", 224),
    "siglip-vit-l-16": ("ViT-L-16-SigLIP-256", "webli", "siglip", 256),
    "siglip-vit-l-16-384": ("ViT-L-16-SigLIP-384", "webli", "siglip", 384),
    "siglip-so400m-14": ("ViT-SO400M-14-SigLIP", "webli", "siglip", 224),
    "siglip-so400m-14-384": ("ViT-SO400M-14-SigLIP-384", "webli", "siglip", 384),
}

for _name, (_model, _tag, _family, _res) in _NAMED.items():
    register(_spec(_name, _model, _tag, _family, _res))


@register_resolver
def resolve_open_clip(name: str) -> BackboneSpec | None:
    """`open_clip:<model>[:<tag>]`, or `<model>:<tag>` for a model open_clip knows (e.g. ViT-B-16:openai)."""
    explicit = name.startswith("open_clip:")
    rest = name.removeprefix("open_clip:")
    if not explicit and ":" not in rest:
        return None
    import open_clip

    model, _, tag = rest.partition(":")
    known = open_clip.list_models()
    if model not in known:
        if not explicit:
            return None
        import difflib

        close = difflib.get_close_matches(model, known, n=3, cutoff=0.6)
        raise UserError(f"unknown open_clip model {model!r}; " + (f"did you mean {', '.join(close)}?" if close else "see open_clip.list_models()"))
    if tag and not open_clip.get_pretrained_cfg(model, tag):
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise UserError(f"open_clip has no weights {tag!r} for {model}; known tags: {', '.join(tags) or 'none'}")
    size = (open_clip.get_model_config(model) or {}).get("vision_cfg", {}).get("image_size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return _spec(name, model, tag or None, "open_clip", size)
