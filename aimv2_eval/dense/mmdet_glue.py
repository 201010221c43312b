"""Our ViTDet backbone and SimpleFPN in mmdetection's registry (as mmdet's ViTDet project registers its own), and
what every mmdet engine needs: the availability check, one install command, quiet logs. Installed with
`bash scripts/install_detection.sh`.

Registered names, usable from any mmdet config once `register()` ran:
  `AIMv2EvalViTDet`    backbone: any aimv2-eval registry ViT in ViTDet form (by `name`, or a built `backbone`)
  `AIMv2EvalSimpleFPN` neck: SimpleFPN, strides 4-64
  `AIMv2EvalLN2d`      norm: LayerNorm over channels
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from aimv2_eval.dense.vitdet import LayerNorm2d, SimpleFPN, ViTDetBackbone
from aimv2_eval.errors import UserError
from aimv2_eval.logs import quiet

INSTALL = "bash scripts/install_detection.sh"


def available() -> bool:
    try:
        import mmcv.ops  # noqa: F401  (the compiled RoIAlign / NMS ops)
        import mmdet  # noqa: F401
    except Exception:  # absent, or a build that does not load against this torch
        return False
    return True


def require() -> None:
    if not available():
        raise UserError(f"the mmdet engine is not installed (mmdet 3.3.0 + mmcv 2.1.0 with ops); run `{INSTALL}` "
                        "or choose engine: torchvision")


class AIMv2EvalViTDet(nn.Module):
    """mmdet backbone: images -> (the last block's stride-16 map,)."""

    def __init__(self, backbone: nn.Module | None = None, name: str | None = None, pretrained: bool = True,
                 weights: str | None = None, window: int | None = 16, global_blocks: list[int] | None = None,
                 drop_path_rate: float = 0.0, feature_norm: bool = True, grad_checkpointing: bool = False) -> None:
        super().__init__()
        if backbone is None:
            if name is None:
                raise UserError("AIMv2EvalViTDet needs `name` (an aimv2-eval backbone) or a built `backbone`")
            from aimv2_eval.backbones import create_backbone

            backbone = create_backbone(name, pretrained=pretrained, weights=weights, trainable=True,
                                       drop_path_rate=drop_path_rate, grad_checkpointing=grad_checkpointing)
        self.body = ViTDetBackbone(backbone, window, global_blocks, feature_norm)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.body(images),)

    def init_weights(self) -> None:
        """Pretrained weights come from the registry; mmdet's initialisation must not touch them."""


class AIMv2EvalSimpleFPN(SimpleFPN):
    def __init__(self, in_channels: int, out_channels: int = 256) -> None:
        super().__init__(in_channels, out_channels)

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        # contiguous: LayerNorm2d leaves channels-last strides, and mmcv 2.1's CPU RoIAlign reads the memory as
        # NCHW without checking them (it returned wrong RoI features, and the RoI heads learned only the prior)
        return tuple(t.contiguous() for t in super().forward(inputs[0]))


def register() -> None:
    """Put our modules into mmdet's registry (idempotent)."""
    require()
    from mmdet.registry import MODELS

    for name, cls in (("AIMv2EvalViTDet", AIMv2EvalViTDet), ("AIMv2EvalSimpleFPN", AIMv2EvalSimpleFPN),
                      ("AIMv2EvalLN2d", LayerNorm2d)):
        MODELS.register_module(name=name, module=cls, force=True)


def quiet_mmengine() -> contextlib.AbstractContextManager:
    from mmengine.logging import MMLogger

    return quiet(MMLogger.get_current_instance(), logging.WARNING)
