"""The ViTDet form of any registry ViT (Li et al. 2022; paper Appendix D.2, Table D3) and its SimpleFPN.

Engine-agnostic torch modules: the vitdet plugin's engines put them into a Mask R-CNN, the grounding plugin's into
Grounding DINO.

Choices recorded in every protocol (the paper is silent on them; ViTDet's are followed where it has one):
- **Token grid = image / 16 for every family.** ViTDet's pyramid strides (4, 8, 16, 32, 64) assume patch 16. A
  patch-p backbone (AIMv2, DINOv2, CLIP-L/14: p = 14) sees the image resized by p / 16 (bilinear), so a 1024 px
  image is a 64 x 64 grid for every family and the detector heads are identical.
- **Windowed attention** through the backbone contract (`Backbone.set_window`): window 16 (a task parameter; Table
  D2 ablates 16/24/32/37), 4 global blocks evenly spaced (5, 11, 17, 23 at depth 24), positions resampled to the
  grid by each family's embedding.
- **Features of the last block after the backbone's final norm** (`feature_norm: true`): the features each family
  publishes, and no backbone parameter left unused (DistributedDataParallel needs no find_unused_parameters).
  ViTDet's own ViT has no final norm; `feature_norm: false` reads the raw block output and freezes the unused norm.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

VITDET_STRIDE = 16  # the token stride the pyramid is built for
PYRAMID_STRIDES = (4, 8, 16, 32, 64)  # SimpleFPN's outputs: 4 scales from the last map + a max-pooled level


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of (B, C, H, W) maps (ViTDet's LN2d)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ViTDetBackbone(nn.Module):
    """A registry ViT as ViTDet's backbone: images (B, 3, H, W) -> the last block's map (B, D, H/16, W/16)."""

    def __init__(self, backbone: nn.Module, window: int | None = 16, global_blocks: list[int] | None = None,
                 feature_norm: bool = True) -> None:
        super().__init__()
        self.vit = backbone
        self.patch = backbone.meta.patch_size
        self.feature_norm = feature_norm
        self.channels = backbone.meta.embed_dim
        backbone.set_window(window, global_blocks)
        if not feature_norm:  # the final norm is not used: keep it out of the optimizer and of DDP
            backbone.anatomy().norm.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        if h % VITDET_STRIDE or w % VITDET_STRIDE:
            raise ValueError(f"ViTDet input {h}x{w} is not a multiple of {VITDET_STRIDE}; pad the batch first")
        if self.patch != VITDET_STRIDE:
            size = (h // VITDET_STRIDE * self.patch, w // VITDET_STRIDE * self.patch)
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return self.vit.forward_intermediates(images, indices=[-1], norm=self.feature_norm, output_fmt="NCHW")[0]


def _conv_norm(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), LayerNorm2d(cout))


class SimpleFPN(nn.Module):
    """ViTDet's simple feature pyramid from one stride-16 map: 4x (two 2x deconvolutions), 2x (one), 1x, 1/2x (max
    pool), each followed by a 1x1 and a 3x3 convolution with LayerNorm to `out_channels`; plus a stride-64 level
    max-pooled from the last one (for the RPN's largest anchors). Returns maps at strides 4, 8, 16, 32, 64 (or at
    `strides` and twice the last one)."""

    def __init__(self, in_channels: int, out_channels: int = 256, strides: tuple[int, ...] = (4, 8, 16, 32)) -> None:
        super().__init__()
        d = in_channels
        stages = {
            4: (nn.Sequential(nn.ConvTranspose2d(d, d // 2, 2, stride=2), LayerNorm2d(d // 2), nn.GELU(),
                              nn.ConvTranspose2d(d // 2, d // 4, 2, stride=2)), d // 4),
            8: (nn.ConvTranspose2d(d, d // 2, 2, stride=2), d // 2),
            16: (nn.Identity(), d),
            32: (nn.MaxPool2d(2, stride=2), d),
        }
        if not strides or list(strides) != sorted(set(strides)) or set(strides) - set(stages):
            raise ValueError(f"SimpleFPN strides must be increasing, from {sorted(stages)}; got {strides}")
        # only the levels asked for are built: grounding reads strides 8-64, and the stride-4 map it would drop is
        # the pyramid's most expensive level
        self.stages = nn.ModuleList(stages[s][0] for s in strides)
        widths = tuple(stages[s][1] for s in strides)
        self.lateral = nn.ModuleList(_conv_norm(c, out_channels, 1) for c in widths)
        self.output = nn.ModuleList(_conv_norm(out_channels, out_channels, 3) for _ in widths)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [out(lat(stage(x))) for stage, lat, out in zip(self.stages, self.lateral, self.output)]
        outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs


class ViTDetFeatures(nn.Module):
    """Backbone + SimpleFPN, the feature extractor a Mask R-CNN reads (torchvision's protocol: an ordered dict of
    maps and `out_channels`)."""

    names = ("0", "1", "2", "3", "pool")

    def __init__(self, backbone: ViTDetBackbone, out_channels: int = 256) -> None:
        super().__init__()
        self.body = backbone
        self.fpn = SimpleFPN(backbone.channels, out_channels)
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict(zip(self.names, self.fpn(self.body(images))))
