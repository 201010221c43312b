"""The `vitdet` task plugin (paper Appendix D.2, Table D3): fine-tune a registry ViT as the backbone of a ViTDet Mask
R-CNN and report COCO box and mask AP (pycocotools) on the validation split.

Two engines build the same detector: `mmdet` (mmdetection 3.3, the paper's toolbox; `bash
scripts/install_detection.sh`) and `torchvision` (built in). `engine: auto` picks mmdet when it is installed. The
training loop is the project's engine (AdamW with layer-wise lr decay, warmup + cosine, atomic checkpoints, exact
resume, DDP) for both, so the two differ only in the detector's implementation.
"""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Any

import numpy as np
import torch

from aimv2_eval import validate as v
from aimv2_eval.data.detection import DetectionSet, open_detection_split
from aimv2_eval.data.detection_transforms import (
    LargeScaleJitter,
    ResizePad,
    TransformedDetection,
    collate_detection,
    unmap_predictions,
)
from aimv2_eval.dense import finetune
from aimv2_eval.dense.vitdet import PYRAMID_STRIDES, VITDET_STRIDE, ViTDetBackbone, ViTDetFeatures
from aimv2_eval.engine import (
    Checkpointer,
    ParamSet,
    Progress,
    Schedule,
    autocast,
    build_optimizer,
    param_groups,
)
from aimv2_eval.errors import UserError
from aimv2_eval.launch.distributed import DistContext, gather_objects, shard
from aimv2_eval.metrics.coco import STAT_NAMES, coco_evaluate, largest_box_baseline, to_coco_results
from aimv2_eval.plugins.base import Plugin, PluginResult, RunOptions
from aimv2_eval.plugins.vitdet import mmdet_engine

ENGINES = ("auto", "mmdet", "torchvision")
REQUIRED = ("engine", "image_size", "window", "global_blocks", "drop_path_rate", "lr", "betas", "weight_decay",
            "layer_decay", "warmup_iters", "epochs", "batch_size", "lsj_scale", "anchor_sizes")
DEFAULTS: dict[str, Any] = {  # detector details the paper leaves to mmdet's defaults
    "feature_norm": True,
    "min_lr": 0.0,
    "grad_clip": None,
    "grad_checkpointing": False,
    "fpn_channels": 256,  # ViTDet's SimpleFPN and heads
    "rpn_batch_size_per_image": 256,
    "rpn_proposals_train": 1000,  # mmdet Mask R-CNN: proposals kept after NMS per image
    "rpn_proposals_test": 1000,
    "roi_batch_size_per_image": 512,
    "max_detections": 100,
    "score_threshold": 0.05,
    "eval_batch_size": 8,
}


def _global_blocks(value: Any, where: str) -> Any:
    return value if value == "evenly_spaced" else v.int_list(value, where, ge=0)


CHECKS: dict[str, v.Check] = {
    **v.TRAINING_FIELDS, "engine": partial(v.string, choices=ENGINES), "image_size": v.positive_int,
    "window": v.optional(v.positive_int), "global_blocks": _global_blocks,
    "drop_path_rate": partial(v.number, ge=0, lt=1), "layer_decay": partial(v.number, gt=0, le=1),
    "lsj_scale": partial(v.scale_range, high=None), "feature_norm": v.boolean, "grad_checkpointing": v.boolean,
    # one anchor size per pyramid level (strides 4 to 64)
    "anchor_sizes": partial(v.numbers, length=len(PYRAMID_STRIDES), gt=0), "grad_clip": v.optional(v.nonneg_number),
    "fpn_channels": v.positive_int, "rpn_batch_size_per_image": v.positive_int, "rpn_proposals_train": v.positive_int,
    "rpn_proposals_test": v.positive_int, "roi_batch_size_per_image": v.positive_int,
    "max_detections": v.positive_int, "score_threshold": v.probability,
    # the only optimizer and schedule the training loop implements: anything else would silently run these
    "optimizer": partial(v.string, choices=("adamw",)), "schedule": partial(v.string, choices=("cosine",)),
}



def check_protocol(task: Any) -> None:
    """Types and ranges before finetune converts them (int("x") would be a traceback); unknown keys are typos."""
    where = v.at(task, "protocol")
    v.known_keys(task.protocol, (*REQUIRED, *DEFAULTS, "optimizer", "schedule", "limit"), where)
    v.fields(task.protocol, CHECKS, where)


class VitdetPlugin(Plugin):
    name = "vitdet"
    summary = "ViTDet Mask R-CNN on a fine-tuned registry ViT; COCO box and mask AP (mmdet or torchvision engine)"

    def resolve(self, task: Any, options: RunOptions, backbone: Any) -> dict[str, Any]:
        check_protocol(task)
        return finetune.resolve_protocol(task, options, backbone, DEFAULTS, REQUIRED, ENGINES, "torchvision",
                                         "tasks/coco_vitdet.yaml", "ViTDet")

    def metric_names(self, task: Any, protocol: dict[str, Any]) -> set[str]:
        return {f"{kind}_{stat}" for kind in ("box", "mask") for stat in STAT_NAMES}  # coco_evaluate's names

    def backbone_options(self, protocol: dict[str, Any]) -> dict[str, Any]:
        return {"trainable": True, "drop_path_rate": float(protocol["drop_path_rate"]),
                "grad_checkpointing": bool(protocol["grad_checkpointing"])}

    def load_data(self, task: Any, protocol: dict[str, Any], options: RunOptions) -> tuple[DetectionSet, DetectionSet]:
        train = open_detection_split(task.data, "train", options.data_root)
        val = open_detection_split(task.data, "val", options.data_root)
        if train.class_names != val.class_names:
            raise UserError(f"task {task.name}: train and val have different categories; use one annotation schema")
        return train, val

    def run(self, backbone: Any, task: Any, protocol: dict[str, Any], data: tuple[DetectionSet, DetectionSet],
            options: RunOptions, ctx: DistContext) -> PluginResult:
        return _VitdetRun(backbone, task, protocol, data, options, ctx).run()


def build_detector(backbone: Any, num_classes: int, p: dict[str, Any]) -> torch.nn.Module:
    vitdet = {"window": p["window"], "global_blocks": p["global_blocks"], "feature_norm": p["feature_norm"]}
    if p["engine"] == "mmdet":
        return mmdet_engine.MMDetMaskRCNN(backbone, num_classes, p["image_size"], {**p, **vitdet})
    from aimv2_eval.plugins.vitdet.torchvision_engine import TorchvisionMaskRCNN

    body = ViTDetBackbone(backbone, p["window"], p["global_blocks"], p["feature_norm"])
    return TorchvisionMaskRCNN(ViTDetFeatures(body, int(p["fpn_channels"])), num_classes, p["image_size"], p)


class _VitdetRun:
    def __init__(self, backbone: Any, task: Any, protocol: dict[str, Any], data: tuple[DetectionSet, DetectionSet],
                 options: RunOptions, ctx: DistContext) -> None:
        self.task, self.p, self.opt, self.ctx = task, protocol, options, ctx
        self.train_set, self.val_set = data
        self.device = ctx.device
        self.model = build_detector(backbone, len(self.train_set.class_names), protocol).to(self.device)
        self.throughput: dict[str, float] = {}
        self.history: list[float] = []
        pre = backbone.preprocess
        size = protocol["image_size"]
        self.train_tf = LargeScaleJitter(size, tuple(protocol["lsj_scale"]), seed=options.seed, mean=pre.mean, std=pre.std)
        self.eval_tf = ResizePad(size, mean=pre.mean, std=pre.std)

    def _loader(self, dataset: torch.utils.data.Dataset, batches: list[list[int]]) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=self.opt.workers,
                                           collate_fn=collate_detection)

    # ------------------------------------------------------------ training
    def _optimizer(self) -> torch.optim.Optimizer:
        p = self.p
        groups = param_groups([ParamSet(self.model.backbone, layer_decay=float(p["layer_decay"])),
                               ParamSet(self.model.heads())], float(p["weight_decay"]))
        return build_optimizer(groups, lr=float(p["lr"]), betas=p["betas"])

    def _train(self) -> None:
        p = self.p
        positions = np.asarray(self.train_set.train_indices())
        if p.get("limit"):
            positions = positions[: int(p["limit"])]
        if len(positions) == 0:
            raise UserError(f"task {self.task.name}: no training image has an object; check the annotations")
        total = p["epochs"] * finetune.steps_per_epoch(positions, p["batch_size"])
        optim = self._optimizer()
        schedule = Schedule(optim, total, min(int(p["warmup_iters"]), max(0, total - 1)), float(p["min_lr"]))

        def step_loss(model: torch.nn.Module, batch: Any) -> tuple[dict[str, torch.Tensor], int]:
            images, targets, _ = batch
            targets = [{k: v.to(self.device) for k, v in t.items()} for t in targets]
            return model(images.to(self.device), targets), len(images)

        self.history, self.throughput["train_images_per_s"] = finetune.train_epochs(
            self.model, optim, schedule, TransformedDetection(self.train_set, self.train_tf), positions,
            epochs=p["epochs"], batch_size=p["batch_size"], collate=collate_detection, step_loss=step_loss,
            checkpointer=Checkpointer(self.opt.checkpoint, fingerprint=json.loads(json.dumps(p)),
                                      every_minutes=self.opt.checkpoint_minutes),
            options=self.opt, ctx=self.ctx, precision=p["precision"], grad_clip=p["grad_clip"],
            desc=f"{self.task.name}: training")

    # ------------------------------------------------------------ evaluation
    def _predict(self) -> list[dict]:
        """COCO results of this rank's share of the validation images, gathered on every rank."""
        ds = self.val_set
        mine = shard(list(range(len(ds))), self.ctx)
        bs = int(self.p["eval_batch_size"])
        batches = [mine[i : i + bs] for i in range(0, len(mine), bs)]
        results: list[dict] = []
        start = time.perf_counter()
        bar = Progress(len(mine), f"{self.task.name}: evaluating", unit="img",
                       enabled=self.opt.progress and self.ctx.is_main)
        for images, _, metas in self._loader(TransformedDetection(ds, self.eval_tf), batches):
            with autocast(self.device, self.p["precision"]):
                preds = self.model.predict(images.to(self.device))
            for pred, meta in zip(preds, metas):
                boxes, masks = unmap_predictions(pred["boxes"].float().cpu(), pred["masks"].float().cpu(), meta)
                results += to_coco_results(meta["image_id"], boxes, pred["scores"].float().cpu(),
                                           pred["labels"].cpu(), ds.category_ids, masks)
            bar.update(len(metas))
        bar.close()
        self.throughput["eval_images_per_s"] = round(len(mine) / max(time.perf_counter() - start, 1e-9), 3)
        return [r for part in gather_objects(results, self.ctx) for r in part]

    def run(self) -> PluginResult:
        self._train()
        results = self._predict()
        metrics = coco_evaluate(self.val_set.coco, results)
        baseline = coco_evaluate(self.val_set.coco, largest_box_baseline(self.val_set, train=self.train_set))
        artifacts = finetune.publish(self.task, metrics, results, self.opt, self.ctx)
        main = self.task.metric["main"]
        details = {
            "engine": self.p["engine"],
            "train_loss_per_epoch": self.history,
            "baseline_largest_box": baseline,  # the trivial detector, for scale
            "num_predictions": len(results),
            "data": {"train": self.train_set.identity, "val": self.val_set.identity,
                     "train_report": self.train_set.report, "val_report": self.val_set.report},
            "patch_rule": (f"image resized by {self.model.backbone.meta.patch_size}/{VITDET_STRIDE}: token grid = "
                           f"image / {VITDET_STRIDE} for every family"),
        }
        selection = {"rule": "none: one fixed protocol (Table D3 / mmdet ViTDet recipe), no search", "split": None,
                     "chosen": {"lr": self.p["lr"], "layer_decay": self.p["layer_decay"], "engine": self.p["engine"]}}
        return PluginResult(metrics, main, selection, self.throughput, details, artifacts=artifacts)


PLUGIN = VitdetPlugin()
