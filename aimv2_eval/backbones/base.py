"""The backbone contract: every encoder looks the same to every task (../DESIGN.md, "The backbone contract").

Family modules (aimv2, open_clip, timm_vit, checkpoint, efficientnet) register `BackboneSpec`s in `BACKBONES` and,
for open-ended names such as `timm:<model>` or a path on disk, a resolver in `RESOLVERS`. Shared loading helpers
(Hugging Face cache look-ups, weight checksums) live here so that each family module stays about its family.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from aimv2_eval.core.checkpoints import hub_offline  # shared with the core; text encoders import it from here
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


class Embed(nn.Module):
    """A ViT's patch + position embedding as a module, so that its parameters can be grouped (layer 0).

    `fn(images) -> (tokens (B, P+N, D) with positions added, resampled to the input grid, prefix tokens first,
    grid (h, w))`; `parts` are the modules and parameters `fn` uses. The module is a view: it is not stored on the
    backbone, so its parts keep their own names in the backbone's state dict.
    """

    def __init__(self, fn: Callable[[torch.Tensor], tuple[torch.Tensor, tuple[int, int]]],
                 parts: dict[str, nn.Module | nn.Parameter | None]) -> None:
        super().__init__()
        self.fn = fn
        for name, part in parts.items():
            if isinstance(part, nn.Parameter):
                self.register_parameter(name, part)
            elif isinstance(part, nn.Module):
                self.add_module(name, part)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        return self.fn(images)


@dataclass
class Anatomy:
    """A ViT taken apart, so that the shared loop (and dense tasks) can run the blocks themselves.

    embed(images) -> (tokens (B, P+N, D), grid (h, w)); each block maps (B, L, D) -> (B, L, D); norm is the final
    norm. Together they hold every parameter of the backbone exactly once.
    """

    embed: nn.Module
    blocks: Sequence[nn.Module]
    norm: nn.Module
    num_prefix_tokens: int


@dataclass(frozen=True)
class WindowSpec:
    """Windowed attention (ViTDet): blocks not in `global_blocks` attend within `size` x `size` windows."""

    size: int
    global_blocks: tuple[int, ...]


def window_partition(x: torch.Tensor, grid: tuple[int, int], size: int, num_prefix: int
                     ) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(B, P+h*w, D) -> (B*nw, P+wh*ww, D): the grid cut into windows (zero-padded at the bottom/right to a whole
    number of windows, unmasked, as ViTDet pads), each window preceded by a copy of the prefix tokens."""
    b, _, d = x.shape
    h, w = grid
    wh, ww = min(size, h), min(size, w)  # a window larger than the grid is the grid: the plain forward
    ph, pw = -h % wh, -w % ww
    patches = x[:, num_prefix:].reshape(b, h, w, d)
    if ph or pw:
        patches = F.pad(patches, (0, 0, 0, pw, 0, ph))
    nh, nw = (h + ph) // wh, (w + pw) // ww
    windows = patches.reshape(b, nh, wh, nw, ww, d).permute(0, 1, 3, 2, 4, 5).reshape(b * nh * nw, wh * ww, d)
    if num_prefix:
        windows = torch.cat([x[:, :num_prefix].repeat_interleave(nh * nw, dim=0), windows], dim=1)
    return windows, (b, h, w, wh, ww, nh, nw)


def window_merge(y: torch.Tensor, layout: tuple[int, ...], num_prefix: int) -> torch.Tensor:
    """Inverse of `window_partition`; a prefix token's output is its mean over the windows it joined."""
    b, h, w, wh, ww, nh, nw = layout
    d = y.shape[-1]
    patches = y[:, num_prefix:].reshape(b, nh, nw, wh, ww, d).permute(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(b, nh * wh, nw * ww, d)[:, :h, :w].reshape(b, h * w, d)
    if not num_prefix:
        return patches
    prefix = y[:, :num_prefix].reshape(b, nh * nw, num_prefix, d).mean(1)
    return torch.cat([prefix, patches], dim=1)


def evenly_spaced_global_blocks(depth: int, count: int = 4) -> tuple[int, ...]:
    """ViTDet's global blocks: the last block of each of `count` equal stages (2, 5, 8, 11 for depth 12;
    5, 11, 17, 23 for depth 24)."""
    count = min(count, depth)
    return tuple((i + 1) * depth // count - 1 for i in range(count))


OUTPUT_FORMATS = ("NCHW", "NLC")


class Backbone(nn.Module, abc.ABC):
    """An image encoder behind one contract. Subclasses set `meta`, `preprocess`, `weights_id` and implement
    `anatomy` (ViTs; the shared loop below then gives tokens, intermediate features, windowed attention, layer ids,
    drop path and activation checkpointing) or `tokens` (other families).

    Built frozen (eval mode, no gradients) unless `create_backbone(..., trainable=True)`.
    """

    meta: BackboneMeta
    preprocess: Preprocess
    weights_id: str = "random"  # checksum or description of the loaded weights, recorded with every result
    trainable: bool = False
    drop_path_rate: float = 0.0  # stochastic depth, rising linearly to this rate over the blocks (training only)
    grad_checkpointing: bool = False
    window: WindowSpec | None = None

    def anatomy(self) -> Anatomy | None:
        """The ViT anatomy, or None for families that are not ViTs."""
        return None

    def _vit(self) -> Anatomy:
        anatomy = self.anatomy()
        if anatomy is None:
            raise UserError(f"{self.meta.name} is a {self.meta.family} network, not a ViT: this needs a ViT backbone")
        return anatomy

    # ------------------------------------------------------------ forward
    def _run(self, images: torch.Tensor, wanted: Sequence[int], stop_early: bool = False
             ) -> tuple[torch.Tensor, dict[int, torch.Tensor], tuple[int, int]]:
        """embed -> blocks (windowed, drop path, checkpointing as configured); returns the last block's output
        (before the final norm), the outputs of the `wanted` blocks, and the grid."""
        a = self._vit()
        x, grid = a.embed(self.check_images(images))
        depth = len(a.blocks)
        last = max(wanted) + 1 if stop_early and wanted else depth
        kept: dict[int, torch.Tensor] = {}
        for i, block in enumerate(a.blocks[:last]):
            x = self._run_block(i, block, x, grid, a.num_prefix_tokens, depth)
            if i in wanted:
                kept[i] = x
        return x, kept, grid

    def _run_block(self, i: int, block: nn.Module, x: torch.Tensor, grid: tuple[int, int], num_prefix: int,
                   depth: int) -> torch.Tensor:
        windowed = self.window is not None and i not in self.window.global_blocks
        if windowed:
            assert self.window is not None
            inp, layout = window_partition(x, grid, self.window.size, num_prefix)
        else:
            inp, layout = x, ()
        if self.grad_checkpointing and torch.is_grad_enabled() and self.training:
            out = torch.utils.checkpoint.checkpoint(block, inp, use_reentrant=False)
        else:
            out = block(inp)
        if windowed:
            out = window_merge(out, layout, num_prefix)
        rate = self.drop_path_rate * i / max(1, depth - 1)
        if rate > 0 and self.training:
            # Stochastic depth at the block level, the same for every family (not all have per-branch drop path).
            from timm.layers import drop_path

            out = x + drop_path(out - x, rate, True)
        return out

    def tokens(self, images: torch.Tensor, layers: Sequence[int] | None = None) -> TokenOutput:
        """Final patch tokens (after the final norm, prefix removed) of normalised images (B, 3, H, W), plus the
        raw outputs of the requested blocks."""
        a = self._vit()
        wanted = layer_indices(layers, len(a.blocks))
        x, kept, grid = self._run(images, wanted)
        x = a.norm(x)
        p = a.num_prefix_tokens
        return TokenOutput(tokens=x[:, p:], grid=grid, prefix=x[:, :p] if p else None,
                           layers=[kept[i][:, p:] for i in wanted])

    def forward_intermediates(self, images: torch.Tensor, indices: int | Sequence[int] | None = None,
                              norm: bool = False, output_fmt: str = "NCHW") -> list[torch.Tensor]:
        """Features of some blocks for dense heads, as timm's `forward_intermediates`: `indices` an int n (the
        last n blocks) or block indices (negative count from the end; default: the last block); `norm` applies
        the final norm; `output_fmt` "NCHW" gives maps (B, D, h, w), "NLC" tokens (B, N, D). Prefix tokens are
        dropped. Blocks after the last requested one are not run."""
        if output_fmt not in OUTPUT_FORMATS:
            raise UserError(f"output_fmt must be one of {', '.join(OUTPUT_FORMATS)}, got {output_fmt!r}")
        a = self._vit()
        depth = len(a.blocks)
        if indices is None:
            indices = [depth - 1]
        elif isinstance(indices, int):
            if not 0 < indices <= depth:
                raise UserError(f"indices={indices}: ask for 1..{depth} last blocks, or a list of block indices")
            indices = list(range(depth - indices, depth))
        wanted = layer_indices(indices, depth)
        _, kept, (h, w) = self._run(images, wanted, stop_early=True)
        p = a.num_prefix_tokens
        out = []
        for i in wanted:
            x = a.norm(kept[i]) if norm else kept[i]
            x = x[:, p:]
            out.append(x.transpose(1, 2).reshape(x.shape[0], -1, h, w) if output_fmt == "NCHW" else x)
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokens(images).tokens

    # ------------------------------------------------------------ fine-tuning
    def set_window(self, size: int | None, global_blocks: Sequence[int] | None = None) -> Backbone:
        """Windowed attention in every block but `global_blocks` (default: 4 evenly spaced, as ViTDet); None
        turns it off. Positions are resampled to the input grid by the embedding, whatever the input size."""
        if size is None:
            self.window = None
            return self
        depth = len(self._vit().blocks)
        if size < 1:
            raise UserError(f"window size must be a positive number of patches, got {size}")
        blocks = evenly_spaced_global_blocks(depth) if global_blocks is None else tuple(layer_indices(global_blocks, depth))
        self.window = WindowSpec(int(size), tuple(sorted(set(blocks))))
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> Backbone:
        self._vit()
        self.grad_checkpointing = enable
        return self

    def layer_ids(self) -> dict[str, int]:
        """Parameter name -> layer id: embedding 0, block i -> i + 1, final norm depth + 1 (for layer-wise lr
        decay). Every parameter has exactly one id."""
        a = self._vit()
        by_param: dict[int, int] = {}
        parts = [(0, a.embed), *((i + 1, b) for i, b in enumerate(a.blocks)), (len(a.blocks) + 1, a.norm)]
        for lid, module in parts:
            for p in module.parameters():
                if id(p) in by_param:
                    raise RuntimeError(f"{self.meta.name}: a parameter belongs to layers {by_param[id(p)]} and {lid}")
                by_param[id(p)] = lid
        ids = {}
        for name, p in self.named_parameters():
            if id(p) not in by_param:
                raise RuntimeError(f"{self.meta.name}: parameter {name} is outside the anatomy (unused by forward)")
            ids[name] = by_param[id(p)]
        return ids

    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        """timm's protocol for `param_groups_layer_decay`: parameter name -> layer id."""
        ids = self.layer_ids()
        return ids.__getitem__

    def no_weight_decay(self) -> set[str]:
        """Names of parameters excluded from weight decay besides 1-D ones: position tables and prefix tokens."""
        keys = ("pos_embed", "positional_embedding", "cls_token", "class_embedding", "reg_token")
        return {n for n, _ in self.named_parameters() if any(k in n.rsplit(".", 1)[-1] for k in keys)}

    # ------------------------------------------------------------ misc
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
    # check_weights(source): what a build from `source` would reject, found without loading weights (None: no
    # such check); `describe_backbone` runs it, so `run` fails before it loads any data
    check_weights: Callable[[str], None] | None = None


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


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str, source: str | Path) -> None:
    """`module.load_state_dict(state)`; missing / unexpected keys or wrong shapes (a damaged or foreign file) end in
    one line naming the file and the first mismatch."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        raise UserError(f"{source}: the {what} does not match its architecture "
                        f"({lines[1].strip() if len(lines) > 1 else lines[0]}); re-download the checkpoint") from None


def missing_weights(what: str, repo_id: str, filenames: Sequence[str], local: str) -> UserError:
    """The one-line error for weights that are neither cached nor downloadable."""
    files = " ".join(filenames[:1])
    return UserError(
        f"weights for {what} are not available offline (not in the Hugging Face cache: {repo_id}); "
        f"run `hf download {repo_id} {files}` where there is network, or pass {local}"
    )
