"""AIMv2 through the project's own core: every released checkpoint, short aliases, and the project's tiny AIMv2.

Released names and hub ids follow Apple's Hugging Face repos (apple/<name>); sizes come from Table 1
(../shared/paper/tables/table1_model_family.csv) through `aimv2_eval.core.variants.encoder_config`.
Preprocessing: the hub's preprocessor_config.json when the snapshot has one; otherwise what the hub and timm publish,
i.e. shortest-edge resize to the input size (bicubic), centre crop, OpenAI CLIP mean/std; the native-resolution
checkpoint takes the image as it is (no resize, no crop; trimmed to a multiple of 14).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from aimv2_eval.backbones.base import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Anatomy,
    Backbone,
    BackboneMeta,
    BackboneSpec,
    Preprocess,
    hf_cached,
    load_state_strict,
    register,
    weights_checksum,
)
from aimv2_eval.core.checkpoints import (
    checked_config,
    from_apple,
    infer_config,
    is_positive_int,
    load_encoder,
    locate_weights,
    looks_like_hub_id,
    read_checkpoint,
    read_json_object,
    to_apple,
)
from aimv2_eval.core.encoder import AIMv2Encoder, EncoderConfig
from aimv2_eval.core.variants import HEADS_BY_WIDTH, encoder_config
from aimv2_eval.errors import UserError

TINY_DIR = Path(__file__).resolve().parent.parent / "assets" / "aimv2-tiny"
TINY_BUILD = "aimv2-eval pretrain --config configs/pretrain/tiny.yaml"
HUB_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


class AIMv2Backbone(Backbone):
    """An `AIMv2Encoder` behind the contract: no prefix tokens, final RMSNorm, learned positions resized bicubically
    (or sin-cos computed) for any input size."""

    def __init__(self, encoder: AIMv2Encoder, name: str, preprocess: Preprocess, weights_id: str = "random") -> None:
        super().__init__()
        cfg = encoder.cfg
        self.encoder = encoder
        self.preprocess = preprocess
        self.weights_id = weights_id
        self.meta = BackboneMeta(
            name=name,
            family="aimv2",
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            patch_size=cfg.patch_size,
            image_size=cfg.image_size,
            any_resolution=cfg.pos_embed == "sincos",
            num_prefix_tokens=0,
        )

    def anatomy(self) -> Anatomy:
        trunk = self.encoder.trunk
        # the preprocessor module is the embedding: patches + positions for any input size
        return Anatomy(self.encoder.preprocessor, trunk.blocks, trunk.post_trunk_norm, num_prefix_tokens=0)


def aimv2_preprocess(cfg: EncoderConfig, folder: Path | None = None) -> Preprocess:
    """Preprocessing from a checkpoint folder's preprocessor_config.json, else the published defaults. The fields it
    reads must be well formed (positive sizes, a known resample filter, one mean / std per RGB channel, std > 0)."""
    native = cfg.pos_embed == "sincos"
    if native:
        default = Preprocess(cfg.image_size, resize=None, crop=False, multiple_of=cfg.patch_size)
    else:
        default = Preprocess(cfg.image_size, resize=cfg.image_size, crop=True)
    path = folder / "preprocessor_config.json" if folder else None
    if path is None or not path.is_file():
        return default
    pc = read_json_object(path)
    size = pc.get("size") or {}
    crop = pc.get("crop_size") or {}
    resize = size.get("shortest_edge") if isinstance(size, dict) else size
    crop_size = crop.get("height") if isinstance(crop, dict) else crop
    for key, value in (("size", resize), ("crop_size", crop_size)):
        if value is not None and not is_positive_int(value):
            raise UserError(f"{path}: {key} must be a positive number of pixels, got {value!r}; fix or re-download it")
    for key in ("do_resize", "do_center_crop"):
        if pc.get(key) is not None and not isinstance(pc[key], bool):
            raise UserError(f"{path}: {key} must be true or false, got {pc[key]!r}; fix or re-download it")
    resample = pc.get("resample")
    if resample is not None and (isinstance(resample, bool) or resample not in _PIL_RESAMPLE):
        raise UserError(f"{path}: resample must be a PIL filter number (0-5), got {resample!r}; fix or re-download it")
    do_resize = pc.get("do_resize", resize is not None) and resize is not None
    do_crop = pc.get("do_center_crop", crop_size is not None) and crop_size is not None
    return Preprocess(
        image_size=int(crop_size or resize or cfg.image_size),
        resize=int(resize) if do_resize and resize is not None else None,
        crop=bool(do_crop),
        interpolation=_PIL_RESAMPLE.get(pc.get("resample", 3), "bicubic"),
        mean=_per_channel(pc, "image_mean", OPENAI_CLIP_MEAN, path),
        std=_per_channel(pc, "image_std", OPENAI_CLIP_STD, path),
        multiple_of=1 if do_crop else cfg.patch_size,
    )


def _per_channel(pc: dict, key: str, default: tuple[float, float, float], path: Path) -> tuple[float, float, float]:
    """image_mean / image_std: three finite numbers (std positive: images are divided by it)."""
    value = pc.get(key)
    if value is None:
        return default
    ok = isinstance(value, list) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok or (key == "image_std" and min(value) <= 0):
        need = "three positive numbers" if key == "image_std" else "three numbers"
        raise UserError(f"{path}: {key} must be {need}, one per RGB channel, got {value!r}; fix or re-download it")
    return value[0], value[1], value[2]


def backbone_from_source(name: str, source: str | Path) -> AIMv2Backbone:
    """Load AIMv2 weights (a directory, a file or a hub id, any key scheme) as a backbone."""
    encoder, ckpt = load_encoder(source)
    pre = aimv2_preprocess(encoder.cfg, ckpt.weights_path.parent)
    return AIMv2Backbone(encoder, name, pre, weights_checksum(ckpt.weights_path))


def random_from_source(name: str, source: str | Path) -> AIMv2Backbone:
    """The architecture of a checkpoint with random weights (reads names and shapes only, to infer the config)."""
    cfg = checked_config(read_checkpoint(source, device="meta"))
    return AIMv2Backbone(AIMv2Encoder(cfg), name, aimv2_preprocess(cfg))


def check_source(source: str | Path) -> None:
    """What `backbone_from_source` would reject (config.json, preprocessor_config.json, weight files, each
    tensor's name and shape), found without loading any weights; a hub id that is not cached (and the machine
    online) is left to the build, which downloads it."""
    if looks_like_hub_id(str(source)) and locate_weights(source, download=False) is None:
        return
    ckpt = read_checkpoint(source, device="meta")
    aimv2_preprocess(checked_config(ckpt), ckpt.weights_path.parent)


def backbone_from_state(name: str, encoder_state: dict[str, torch.Tensor], config: dict, weights_path: Path,
                        weights_id: str | None = None) -> AIMv2Backbone:
    """A backbone from Apple-scheme encoder weights already read (the image tower inside a LiT checkpoint).

    config: the checkpoint's vision config (may be empty); weights_path: the file they came from, for the error
    message, the preprocessing (its folder's preprocessor_config.json) and the weights id (its sha256 unless given).
    """
    cfg = infer_config(encoder_state, config, weights_path)
    encoder = AIMv2Encoder(cfg)
    load_state_strict(encoder, encoder_state, "image encoder", weights_path)
    pre = aimv2_preprocess(cfg, weights_path.parent)
    return AIMv2Backbone(encoder.eval(), name, pre, weights_id or weights_checksum(weights_path))


def aimv2_heads(width: int) -> int | None:
    """Attention heads of the released AIMv2 encoder of this width (head dim 128), None for other widths."""
    return HEADS_BY_WIDTH.get(width)


# Key-scheme conversion of AIMv2 encoder weights (Apple / transformers / timm), for checkpoint formats that embed an
# AIMv2 encoder (LiT): to_apple -> (Apple-scheme encoder weights, the keys it does not know); from_apple(sd, scheme).
aimv2_keys_to_apple = to_apple
aimv2_keys_from_apple = from_apple


# ---------------------------------------------------------------- released checkpoints
@dataclass(frozen=True)
class Release:
    name: str  # Apple's repo name, hub id apple/<name>
    size: str  # large / huge / 1B / 3B (Table 1)
    resolution: int
    native: bool = False

    @property
    def hub_id(self) -> str:
        return f"apple/{self.name}"


def _releases() -> list[Release]:
    out = [Release(f"aimv2-{s}-patch14-{r}", s, r) for s in ("large", "huge", "1B", "3B") for r in (224, 336, 448)]
    out += [Release(f"aimv2-large-patch14-{r}-distilled", "large", r) for r in (224, 336)]
    out.append(Release("aimv2-large-patch14-native", "large", 224, native=True))
    out.append(Release("aimv2-large-patch14-224-lit", "large", 224))  # its image tower; the text tower is dropped
    return out


def _aliases(rel: Release) -> tuple[str, ...]:
    short = {"large": "l", "huge": "h", "1B": "1b", "3B": "3b"}[rel.size]
    base = f"aimv2-{short}"
    suffix = rel.name.split("patch14-", 1)[1]  # 224, 336-distilled, native, 224-lit
    if suffix == "224":
        return (base, f"{base}-224")
    if suffix.startswith("224-"):
        return (f"{base}-{suffix[4:]}",)
    return (f"{base}-{suffix}",)


def _build_release(rel: Release, pretrained: bool = True, weights: str | None = None) -> AIMv2Backbone:
    if not pretrained:
        cfg = encoder_config(rel.size, image_size=rel.resolution, native=rel.native)
        return AIMv2Backbone(AIMv2Encoder(cfg), rel.name, aimv2_preprocess(cfg))
    return backbone_from_source(rel.name, weights or rel.hub_id)


def _release_present(rel: Release) -> bool:
    return hf_cached(rel.hub_id, HUB_WEIGHT_FILES) is not None


for _rel in _releases():
    register(
        BackboneSpec(
            name=_rel.name,
            family="aimv2",
            resolution=_rel.resolution,
            build=partial(_build_release, _rel),
            source=_rel.hub_id,
            weights_present=partial(_release_present, _rel),
            aliases=_aliases(_rel),
            description="AIMv2 " + ("native resolution" if _rel.native else f"{_rel.size} {_rel.resolution}px"),
            check_weights=check_source,
        )
    )


# ---------------------------------------------------------------- the project's tiny AIMv2
def _tiny_present() -> bool:
    return (TINY_DIR / "config.json").is_file() and (TINY_DIR / "model.safetensors").is_file()


def _build_tiny(pretrained: bool = True, weights: str | None = None) -> AIMv2Backbone:
    if not pretrained:
        cfg = encoder_config("tiny")
        return AIMv2Backbone(AIMv2Encoder(cfg), "aimv2-tiny", aimv2_preprocess(cfg))
    if weights is None and not _tiny_present():
        raise UserError(
            f"the tiny AIMv2 is not built yet (no config.json + model.safetensors in {TINY_DIR}); "
            f"run `{TINY_BUILD}`"
        )
    return backbone_from_source("aimv2-tiny", weights or TINY_DIR)


register(
    BackboneSpec(
        name="aimv2-tiny",
        family="aimv2",
        resolution=encoder_config("tiny").image_size,
        build=_build_tiny,
        source=str(TINY_DIR),
        weights_present=_tiny_present,
        description="the project's tiny AIMv2, pretrained by its own core",
        check_weights=check_source,
    )
)
