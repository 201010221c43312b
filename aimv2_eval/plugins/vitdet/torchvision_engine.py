"""The built-in detection engine: our ViTDet backbone + SimpleFPN inside torchvision's Mask R-CNN, with ViTDet's
heads (2-conv RPN, 4 conv + 1 fc box head with LayerNorm, 4-conv mask head with LayerNorm). Needs nothing but pip.

Images arrive already resized, padded to a square and normalised by our transforms, so torchvision's own transform
is made the identity (mean 0, std 1, min = max size = the input size).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from aimv2_eval.dense.vitdet import LayerNorm2d, ViTDetFeatures


class TorchvisionMaskRCNN(nn.Module):
    """One interface for both engines: `losses(images, targets)` and `predict(images)`."""

    engine = "torchvision"

    def __init__(self, features: ViTDetFeatures, num_classes: int, image_size: int, cfg: dict[str, Any]) -> None:
        super().__init__()
        from torchvision.models.detection import MaskRCNN
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
        from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
        from torchvision.models.detection.rpn import RPNHead
        from torchvision.ops import MultiScaleRoIAlign

        c = features.out_channels
        sizes = tuple((int(s),) for s in cfg["anchor_sizes"])
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
        self.model = MaskRCNN(
            features,
            min_size=image_size, max_size=image_size, image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],
            rpn_anchor_generator=anchors,
            rpn_head=RPNHead(c, 3, conv_depth=2),
            rpn_batch_size_per_image=int(cfg["rpn_batch_size_per_image"]),
            rpn_pre_nms_top_n_train=2 * int(cfg["rpn_proposals_train"]),
            rpn_post_nms_top_n_train=int(cfg["rpn_proposals_train"]),
            rpn_pre_nms_top_n_test=int(cfg["rpn_proposals_test"]),
            rpn_post_nms_top_n_test=int(cfg["rpn_proposals_test"]),
            box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 0),
            box_head=FastRCNNConvFCHead((c, 7, 7), [c] * 4, [1024], norm_layer=LayerNorm2d),
            box_predictor=FastRCNNPredictor(1024, num_classes + 1),  # + background
            box_batch_size_per_image=int(cfg["roi_batch_size_per_image"]),
            box_detections_per_img=int(cfg["max_detections"]),
            box_score_thresh=float(cfg["score_threshold"]),
            mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 0),
            mask_head=MaskRCNNHeads(c, [c] * 4, 1, norm_layer=LayerNorm2d),
            mask_predictor=MaskRCNNPredictor(c, c, num_classes + 1),
        )

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone.body.vit

    def heads(self) -> nn.ModuleList:
        """Everything but the backbone (the neck and the heads), for the optimizer's full-lr group."""
        return nn.ModuleList([self.model.backbone.fpn, self.model.rpn, self.model.roi_heads])

    def losses(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        self.model.train()
        targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1, "masks": t["masks"]} for t in targets]
        return self.model(list(images), targets)

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Training losses (forward, so that DistributedDataParallel sees the call)."""
        return self.losses(images, targets)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per image: boxes (N, 4) xyxy in input pixels, scores, labels (0-based), masks (N, H, W) probabilities."""
        self.model.eval()
        out = self.model(list(images))
        return [{"boxes": o["boxes"], "scores": o["scores"], "labels": o["labels"] - 1, "masks": o["masks"][:, 0]}
                for o in out]
