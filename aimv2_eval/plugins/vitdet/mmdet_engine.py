"""The paper's detection toolbox: mmdetection's Mask R-CNN with our ViTDet backbone and SimpleFPN (registered by
`aimv2_eval.dense.mmdet_glue`), built from mmdet's own config pieces.

The detector is mmdet's `mask-rcnn_r50_fpn.py` base config (shipped inside the mmdet wheel) changed the way mmdet's
ViTDet project changes it: a 2-conv RPN, `Shared4Conv1FCBBoxHead` and the FCN mask head with LayerNorm, our
backbone and neck in place of ResNet + FPN. Installed with `bash scripts/install_detection.sh`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from aimv2_eval.dense.mmdet_glue import INSTALL, available, quiet_mmengine, register
from aimv2_eval.dense.vitdet import PYRAMID_STRIDES
from aimv2_eval.errors import UserError

__all__ = ["MMDetMaskRCNN", "available", "build_config"]

BASE_CONFIG = "_base_/models/mask-rcnn_r50_fpn.py"


def build_config(backbone: nn.Module, num_classes: int, cfg: dict[str, Any]) -> dict[str, Any]:
    """mmdet's Mask R-CNN base config with ViTDet's changes (mmdet projects/ViTDet), as a plain dict."""
    import mmdet
    from mmengine.config import Config

    path = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", BASE_CONFIG)
    if not os.path.isfile(path):
        raise UserError(f"mmdet's {BASE_CONFIG} is missing from the installed wheel; reinstall with `{INSTALL}`")
    model = Config.fromfile(path).to_dict()["model"]
    norm = {"type": "AIMv2EvalLN2d", "requires_grad": True}
    sizes = [int(s) for s in cfg["anchor_sizes"]]
    scales = {s / st for s, st in zip(sizes, PYRAMID_STRIDES)}
    if len(scales) != 1:
        raise UserError(f"anchor_sizes {sizes} must be proportional to the strides {list(PYRAMID_STRIDES)} for mmdet")
    model["data_preprocessor"].update(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], bgr_to_rgb=False,
                                      pad_mask=True, pad_size_divisor=32)  # our transforms normalise already
    model["backbone"] = {"type": "AIMv2EvalViTDet", "backbone": backbone, "window": cfg["window"],
                         "global_blocks": cfg["global_blocks"], "feature_norm": cfg["feature_norm"]}
    c = int(cfg["fpn_channels"])
    model["neck"] = {"type": "AIMv2EvalSimpleFPN", "in_channels": backbone.meta.embed_dim, "out_channels": c}
    rpn = model["rpn_head"]
    rpn.update(num_convs=2, in_channels=c, feat_channels=c)
    rpn["anchor_generator"].update(strides=list(PYRAMID_STRIDES), scales=[scales.pop()], ratios=[0.5, 1.0, 2.0])
    roi = model["roi_head"]
    roi["bbox_roi_extractor"]["out_channels"] = c
    roi["mask_roi_extractor"]["out_channels"] = c
    roi["bbox_head"].update(type="Shared4Conv1FCBBoxHead", in_channels=c, conv_out_channels=c, norm_cfg=norm,
                            num_classes=num_classes)
    roi["mask_head"].update(in_channels=c, conv_out_channels=c, norm_cfg=norm, num_classes=num_classes)
    model["train_cfg"]["rpn"]["sampler"]["num"] = int(cfg["rpn_batch_size_per_image"])
    model["train_cfg"]["rcnn"]["sampler"]["num"] = int(cfg["roi_batch_size_per_image"])
    model["train_cfg"]["rpn_proposal"].update(nms_pre=2 * int(cfg["rpn_proposals_train"]),
                                              max_per_img=int(cfg["rpn_proposals_train"]))
    model["test_cfg"]["rpn"].update(nms_pre=int(cfg["rpn_proposals_test"]), max_per_img=int(cfg["rpn_proposals_test"]))
    model["test_cfg"]["rcnn"].update(max_per_img=int(cfg["max_detections"]), score_thr=float(cfg["score_threshold"]))
    return model


class MMDetMaskRCNN(nn.Module):
    """mmdet's detector behind the same interface as the torchvision engine."""

    engine = "mmdet"

    def __init__(self, backbone: nn.Module, num_classes: int, image_size: int, cfg: dict[str, Any]) -> None:
        super().__init__()
        register()
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules

        register_all_modules(init_default_scope=True)
        from mmengine.config import ConfigDict

        # ConfigDict for mmdet's attribute access (train_cfg.rpn); it keeps the backbone object by reference
        self.detector = MODELS.build(ConfigDict(build_config(backbone, num_classes, cfg)))
        # mmdet's initialisation of its heads (the neck is ours, initialised at construction); never the
        # detector's own init_weights, which would reach the pretrained backbone
        with quiet_mmengine():  # mmengine logs one INFO paragraph per initialised tensor
            for part in (self.detector.rpn_head, self.detector.roi_head):
                part.init_weights()
        self.image_size = image_size

    @property
    def backbone(self) -> nn.Module:
        return self.detector.backbone.body.vit

    def heads(self) -> nn.ModuleList:
        d = self.detector
        return nn.ModuleList([d.neck, d.rpn_head, d.roi_head])

    def _samples(self, n: int, targets: list[dict[str, torch.Tensor]] | None = None) -> list[Any]:
        from mmdet.structures import DetDataSample
        from mmdet.structures.mask import BitmapMasks
        from mmengine.structures import InstanceData

        s = self.image_size
        samples = []
        for i in range(n):
            sample = DetDataSample(metainfo={"img_shape": (s, s), "ori_shape": (s, s), "pad_shape": (s, s),
                                             "scale_factor": (1.0, 1.0), "img_id": i})
            if targets is not None:
                t = targets[i]
                gt = InstanceData()
                gt.bboxes = t["boxes"].float()
                gt.labels = t["labels"].long()
                gt.masks = BitmapMasks(t["masks"].cpu().numpy().astype("uint8"), s, s)
                sample.gt_instances = gt
            samples.append(sample)
        return samples

    def _prepare(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None, training: bool) -> dict:
        data = {"inputs": list(images), "data_samples": self._samples(len(images), targets)}
        return self.detector.data_preprocessor(data, training=training)

    def losses(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        self.detector.train()
        data = self._prepare(images, targets, training=True)
        raw = self.detector.loss(data["inputs"], data["data_samples"])
        # mmdet returns per-level lists for some losses; sum each entry whose name says it is a loss
        return {k: (sum(v) if isinstance(v, list) else v) for k, v in raw.items() if "loss" in k}

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Training losses (forward, so that DistributedDataParallel sees the call)."""
        return self.losses(images, targets)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        self.detector.eval()
        data = self._prepare(images, None, training=False)
        out = []
        for sample in self.detector.predict(data["inputs"], data["data_samples"], rescale=False):
            p = sample.pred_instances
            masks = p.masks.float() if "masks" in p else torch.zeros(len(p.bboxes), *images.shape[-2:])
            out.append({"boxes": p.bboxes, "scores": p.scores, "labels": p.labels, "masks": masks})
        return out
