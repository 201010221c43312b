"""The `grounding` task plugin (paper Section 4.2, Tables 4, D1, D2): a registry ViT in ViTDet form inside
MM-Grounding-DINO, fine-tuned on a grounding mixture, then evaluated on one benchmark: open-vocabulary detection
(COCO / LVIS AP, pycocotools / lvis) or referring expressions (P@1).

Two engines build the same detector: `mmdet` (mmdetection 3.3's GroundingDINO, the paper's toolbox; `bash
scripts/install_detection.sh`) and `builtin` (plain torch). `engine: auto` picks mmdet when it is installed. The
training loop is the project's engine for both (AdamW, backbone and text encoder at 0.1x lr, step decay, clipping,
atomic checkpoints, exact resume, DDP).

One training serves every benchmark, as in the paper (one model per backbone, evaluated on COCO, LVIS and the three
RefCOCOs): the tuned detector is kept under `$AIMV2_EVAL_CACHE/grounding/<key>`, where the key hashes everything that
defines the training (backbone and weights, text encoder and weights, detector, recipe, training mixture, seed).

Prompts (text.py): detection samples see their classes' names joined by " . " — every positive plus negatives drawn
in a seeded random order until `max_text_len` tokens are used (MM-Grounding-DINO's RandomSamplingNegPos) — REC
samples their expression. Evaluation prompts every class, `chunk_size` names at a time (LVIS: 40), and keeps the
best `max_detections` boxes over all chunks.

Choices the paper leaves open (recorded in the protocol): square inputs of `image_size` (ViTDet's form; MM-G-DINO
resizes to at most 1333 x 800), training scale jitter without crops or flips (a crop can cut a referred object out
and a flip falsifies "left of"), the token grid rule of the vitdet plugin (image / 16 for every family).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from functools import partial
from typing import Any

import numpy as np
import torch

from aimv2_eval import validate as v
from aimv2_eval.config import cache_home
from aimv2_eval.data.detection import DetectionSample
from aimv2_eval.data.detection_transforms import LargeScaleJitter, ResizePad, unmap_predictions
from aimv2_eval.data.grounding import GroundingSet, open_grounding_split
from aimv2_eval.dense import finetune
from aimv2_eval.dense.vitdet import VITDET_STRIDE
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
from aimv2_eval.io import torch_save_atomic
from aimv2_eval.launch.distributed import DistContext, gather_objects, shard
from aimv2_eval.metrics import grounding as gm
from aimv2_eval.metrics.coco import STAT_NAMES, to_coco_results
from aimv2_eval.plugins.base import Plugin, PluginResult, RunOptions
from aimv2_eval.plugins.grounding import mmdet_engine, text

ENGINES = ("auto", "mmdet", "builtin")
REQUIRED = ("engine", "image_size", "window", "global_blocks", "drop_path_rate", "text_encoder", "max_text_len",
            "dino", "lr", "betas", "weight_decay", "backbone_lr_mult", "text_lr_mult", "grad_clip", "epochs",
            "milestones", "batch_size", "train_scale", "train_data")
DEFAULTS: dict[str, Any] = {
    "feature_norm": True,
    "fpn_channels": 256,
    "gamma": 0.1,
    "warmup_iters": 0,
    "grad_checkpointing": False,
    "max_detections": 300,  # MM-Grounding-DINO test_cfg max_per_img
    "chunk_size": 40,  # MM-Grounding-DINO's LVIS chunked_size
    "eval_batch_size": 8,
}
# what the training depends on (not the benchmark): one tuned model serves every task sharing these
TRAIN_KEYS = ("engine", "image_size", "window", "global_blocks", "drop_path_rate", "feature_norm", "fpn_channels",
              "text_encoder", "max_text_len", "dino", "lr", "betas", "weight_decay", "backbone_lr_mult", "text_lr_mult",
              "grad_clip", "epochs", "milestones", "gamma", "warmup_iters", "batch_size", "train_scale", "train_data",
              "limit", "precision", "grad_checkpointing", "token_grid")


def _global_blocks(value: Any, where: str) -> Any:
    return value if value == "evenly_spaced" else v.int_list(value, where, ge=0)


def _train_data(value: Any, where: str) -> Any:
    if not isinstance(value, list) or not value or not all(isinstance(d, dict) for d in value):
        raise v.fail(where, "a non-empty list of data blocks ({source: ..., <source>: {...}})", value)
    return value


CHECKS: dict[str, v.Check] = {
    **v.TRAINING_FIELDS, "engine": partial(v.string, choices=ENGINES), "image_size": v.positive_int,
    "window": v.optional(v.positive_int), "global_blocks": _global_blocks,
    "drop_path_rate": partial(v.number, ge=0, lt=1), "text_encoder": v.string, "max_text_len": v.positive_int,
    "dino": v.mapping, "backbone_lr_mult": v.nonneg_number, "text_lr_mult": v.nonneg_number,
    "grad_clip": v.optional(v.nonneg_number), "milestones": partial(v.int_list, ge=1, nonempty=False),
    "gamma": v.positive_number, "train_scale": v.scale_range, "train_data": _train_data,
    "feature_norm": v.boolean, "grad_checkpointing": v.boolean, "fpn_channels": v.positive_int,
    "max_detections": v.positive_int, "chunk_size": v.positive_int,
}
# the detector's sizes (DinoConfig; max_text_len comes from the protocol): the built-in engine drops unknown keys
DINO_CHECKS: dict[str, v.Check] = {
    **{k: v.positive_int for k in ("hidden", "num_queries", "encoder_layers", "decoder_layers", "num_heads", "ffn",
                                   "text_ffn", "fusion_ffn", "num_levels", "num_points", "text_heads", "fusion_heads")},
    "dn_queries": v.nonneg_int, "label_noise": v.nonneg_number, "box_noise": v.nonneg_number,
    "dropout": partial(v.number, ge=0, lt=1), "fusion_dropout": partial(v.number, ge=0, lt=1),
}


def check_protocol(task: Any) -> None:
    """Types and ranges before finetune converts them (int("x") would be a traceback); unknown keys are typos."""
    p, where = task.protocol, v.at(task, "protocol")
    v.known_keys(p, (*REQUIRED, *DEFAULTS, "limit"), where)
    v.fields(p, CHECKS, where)
    if "dino" in p:
        v.known_keys(p["dino"], DINO_CHECKS, f"{where}.dino")
        v.fields(p["dino"], DINO_CHECKS, f"{where}.dino")


class GroundingPlugin(Plugin):
    name = "grounding"
    summary = "MM-Grounding-DINO on a fine-tuned registry ViT (ViTDet form); OVD AP and REC P@1 (mmdet or built-in)"

    def resolve(self, task: Any, options: RunOptions, backbone: Any) -> dict[str, Any]:
        check_protocol(task)  # train_data a non-empty list, train_scale within the image (no crops), ...
        # image_size: a multiple of 64, so that the stride-64 level tiles the image
        return finetune.resolve_protocol(task, options, backbone, DEFAULTS, REQUIRED, ENGINES, "builtin",
                                         "tasks/_grounding.yaml", "grounding", size_multiple=4 * VITDET_STRIDE)

    def metric_names(self, task: Any, protocol: dict[str, Any]) -> set[str] | None:
        """_rec's P@k for referring expressions; _ap's names for detection (LVIS's evaluator, or COCO's with base
        and novel AP where the set names novel classes); None where the split's kind is known only from its file."""
        source = task.data.get("source")
        opts = (task.data.get(source) or {}) if isinstance(source, str) else {}
        kind = opts.get("kind") if isinstance(opts, dict) else None
        if source in ("scenes_rec", "hf") or (source == "mdetr" and kind in (None, "rec")) or kind == "rec":
            return {f"p_at_{k}" for k in gm.REC_TOPK}
        if source == "lvis":
            return set(gm.LVIS_NAMES.values())
        if source in ("coco", "scenes_ovd") or (source == "odvg" and kind == "detection"):
            novel = opts.get("held_out" if source == "scenes_ovd" else "novel")
            groups = [f"{ap}_{g}" for ap in ("ap", "ap50") for g in ("base", "novel")] if novel else []
            return {*STAT_NAMES, *groups}
        return None

    def backbone_options(self, protocol: dict[str, Any]) -> dict[str, Any]:
        return {"trainable": True, "drop_path_rate": float(protocol["drop_path_rate"]),
                "grad_checkpointing": bool(protocol["grad_checkpointing"])}

    def load_data(self, task: Any, protocol: dict[str, Any], options: RunOptions) -> tuple[list[GroundingSet], GroundingSet]:
        train = [open_grounding_split(block, "train", options.data_root) for block in protocol["train_data"]]
        val = open_grounding_split(task.data, "val", options.data_root)
        if val.kind not in ("rec", "detection"):
            raise UserError(f"task {task.name}: the evaluation set is a {val.kind} set; grounding evaluates rec "
                            "(P@1) or detection (AP) sets")
        if val.kind == "detection" and not val.class_names:
            raise UserError(f"task {task.name}: the evaluation set has no category names to prompt with")
        leaked = set(val.novel_names) & {name for s in train for name in _box_counts(s)}
        if leaked:
            raise UserError(f"task {task.name}: novel class {sorted(leaked)[0]!r} is annotated in the training "
                            "mixture; hold it out there too (scenes_ovd: the same held_out list)")
        return train, val

    def run(self, backbone: Any, task: Any, protocol: dict[str, Any], data: tuple[list[GroundingSet], GroundingSet],
            options: RunOptions, ctx: DistContext) -> PluginResult:
        return _GroundingRun(backbone, task, protocol, data, options, ctx).run()


def _box_counts(dataset: GroundingSet) -> Counter[str]:
    """Boxes per class name in a detection set (empty for REC / phrase sets)."""
    if dataset.kind != "detection" or dataset.gt is None:
        return Counter()
    names = dict(zip(dataset.category_ids, dataset.class_names))
    return Counter(names[a["category_id"]] for a in dataset.gt["annotations"])


def build_detector(backbone: Any, text_encoder: Any, p: dict[str, Any]) -> torch.nn.Module:
    if p["engine"] == "mmdet":
        return mmdet_engine.MMDetGroundingDINO(backbone, text_encoder, p, p["image_size"])
    from aimv2_eval.plugins.grounding.builtin import BuiltinGroundingDINO

    return BuiltinGroundingDINO(backbone, text_encoder, p, p["image_size"])


def training_key(backbone: Any, text_encoder: Any, p: dict[str, Any], seed: int) -> str:
    what = {"backbone": backbone.meta.name, "weights": backbone.weights_id, "text_weights": text_encoder.weights_id,
            "seed": seed, **{k: p.get(k) for k in TRAIN_KEYS}}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _as_detection(sample: Any) -> DetectionSample:
    """The detection transforms' view of a grounding sample: labels are box indices, so the spans of the boxes
    that survive the transform can be found again."""
    n = len(sample.boxes)
    return DetectionSample(sample.image, sample.boxes, np.arange(n, dtype=np.int64), None, sample.image_id,
                           np.zeros(n, dtype=bool))


class Prompter:
    """Detection samples' prompts: positives + seeded random negatives within the token budget, shuffled."""

    def __init__(self, encoder: Any, sets: list[GroundingSet], max_text_len: int, seed: int) -> None:
        tok = text.require_fast_tokenizer(encoder)
        self.seed = seed
        self.budget = max_text_len - 2  # [CLS] and [SEP]
        self.lengths = {id(s): [len(tok(n, add_special_tokens=False)["input_ids"]) + 1 for n in s.class_names]
                        for s in sets if s.kind == "detection"}

    def __call__(self, dataset: GroundingSet, sample: Any, epoch: int, index: int) -> tuple[str, list[list[text.Span]]]:
        if dataset.kind != "detection":
            return sample.caption, sample.spans
        rng = np.random.default_rng([self.seed, epoch, index, 7])
        lengths = self.lengths[id(dataset)]
        positives = list(dict.fromkeys(int(v) for v in sample.labels))
        chosen, used = [], 0
        for c in positives + [int(c) for c in rng.permutation(len(lengths)) if c not in set(positives)]:
            if used + lengths[c] > self.budget:
                if c in positives:
                    raise UserError(f"{dataset.name}: the names of one image's classes exceed {self.budget} tokens; "
                                    "raise protocol.max_text_len")
                break
            chosen.append(c)
            used += lengths[c]
        chosen = [chosen[i] for i in rng.permutation(len(chosen))]
        caption, spans = text.detection_prompt([dataset.class_names[c] for c in chosen])
        where = {c: k for k, c in enumerate(chosen)}
        return caption, [spans[where[int(label)]] for label in sample.labels]


class _TrainSamples(torch.utils.data.Dataset):
    """(image, caption, target) of the mixture's samples, indexed through the concatenated sets."""

    def __init__(self, sets: list[GroundingSet], transform: LargeScaleJitter, prompter: Prompter) -> None:
        self.sets, self.transform, self.prompter = sets, transform, prompter
        self.starts = np.cumsum([0] + [len(s) for s in sets])
        self.epoch = 0

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, flat: int) -> tuple[torch.Tensor, str, dict[str, Any]]:
        k = int(np.searchsorted(self.starts, flat, side="right")) - 1
        sample = self.sets[k][flat - int(self.starts[k])]  # `flat` also seeds the sample's jitter and prompt
        caption, spans = self.prompter(self.sets[k], sample, self.epoch, flat)
        image, target, _ = self.transform(_as_detection(sample), self.epoch, flat)
        kept = target["labels"].tolist()
        return image, caption, {"boxes": target["boxes"], "spans": [spans[j] for j in kept]}


def _collate(batch: list) -> tuple[torch.Tensor, list, list]:
    images, captions, targets = zip(*batch)
    return torch.stack(images), list(captions), list(targets)


class _GroundingRun:
    def __init__(self, backbone: Any, task: Any, p: dict[str, Any], data: tuple[list[GroundingSet], GroundingSet],
                 options: RunOptions, ctx: DistContext) -> None:
        from aimv2_eval.text import create_text_encoder

        self.backbone, self.task, self.p, self.opt, self.ctx = backbone, task, p, options, ctx
        self.train_sets, self.val_set = data
        torch.manual_seed(options.seed)  # the detector's initialisation
        # text_lr_mult 0 freezes the text encoder (the embedded task's CPU-scale choice)
        self.text_encoder = create_text_encoder(str(p["text_encoder"]), pretrained=True,
                                                trainable=float(p["text_lr_mult"]) > 0)
        self.model = build_detector(backbone, self.text_encoder, p).to(ctx.device)
        self.throughput: dict[str, float] = {}
        pre = backbone.preprocess
        size = p["image_size"]
        self.train_tf = LargeScaleJitter(size, tuple(p["train_scale"]), seed=options.seed, mean=pre.mean, std=pre.std,
                                         flip_prob=0.0)
        self.eval_tf = ResizePad(size, mean=pre.mean, std=pre.std)

    # ------------------------------------------------------------ training
    def _optimizer(self) -> torch.optim.Optimizer:
        p = self.p
        sets = [ParamSet(self.model.backbone, lr_scale=float(p["backbone_lr_mult"])), ParamSet(self.model.heads())]
        if float(p["text_lr_mult"]) > 0:
            sets.append(ParamSet(self.model.text_encoder, lr_scale=float(p["text_lr_mult"])))
        groups = param_groups(sets, float(p["weight_decay"]))
        return build_optimizer(groups, lr=float(p["lr"]), betas=p["betas"])

    def _train(self, key: str) -> dict[str, Any]:
        p = self.p
        samples = _TrainSamples(self.train_sets, self.train_tf,
                                Prompter(self.text_encoder, self.train_sets, int(p["max_text_len"]), self.opt.seed))
        positions = np.arange(len(samples))
        if p.get("limit"):
            positions = positions[: int(p["limit"])]
        if not len(positions):
            raise UserError(f"task {self.task.name}: the training mixture is empty")
        per_epoch = finetune.steps_per_epoch(positions, p["batch_size"])
        total = p["epochs"] * per_epoch
        optim = self._optimizer()
        milestones = [int(m) * per_epoch for m in p["milestones"]]  # epochs, as MM-G-DINO's MultiStepLR
        schedule = Schedule(optim, total, min(int(p["warmup_iters"]), max(0, total - 1)), milestones=milestones,
                            gamma=float(p["gamma"]))
        self.model.train()
        if float(p["text_lr_mult"]) == 0:  # frozen: no dropout either
            self.model.text_encoder.eval()

        def step_loss(model: torch.nn.Module, batch: Any) -> tuple[dict[str, torch.Tensor], int]:
            images, captions, targets = batch
            targets = [{"boxes": t["boxes"].to(self.ctx.device), "spans": t["spans"]} for t in targets]
            return model(images.to(self.ctx.device), captions, targets), len(images)

        history, images_per_s = finetune.train_epochs(
            self.model, optim, schedule, samples, positions, epochs=p["epochs"], batch_size=p["batch_size"],
            collate=_collate, step_loss=step_loss,
            checkpointer=Checkpointer(self.opt.checkpoint, fingerprint={"training_key": key},
                                      every_minutes=self.opt.checkpoint_minutes), options=self.opt,
            ctx=self.ctx, precision=p["precision"], grad_clip=p["grad_clip"], desc=f"{self.task.name}: training")
        return {"train_loss_per_epoch": history, "samples": len(positions), "train_images_per_s": images_per_s}

    def _train_or_load(self) -> tuple[dict[str, Any], str]:
        key = training_key(self.backbone, self.text_encoder, self.p, self.opt.seed)
        path = cache_home() / "grounding" / key / "model.pt"
        if path.is_file():
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                self.model.load_state_dict(state["model"])
            except Exception as exc:
                raise UserError(f"cannot load the tuned detector {path} ({type(exc).__name__}); delete it to "
                                "retrain") from None
            return {**state["summary"], "reused": True}, key
        summary = self._train(key)
        if self.ctx.is_main:
            torch_save_atomic(path, {"model": self.model.state_dict(), "summary": summary})
        return {**summary, "reused": False}, key

    # ------------------------------------------------------------ evaluation
    def _eval_batches(self) -> tuple[list[int], list[list[int]]]:
        mine = shard(list(range(len(self.val_set))), self.ctx)
        bs = int(self.p["eval_batch_size"])
        return mine, [mine[i : i + bs] for i in range(0, len(mine), bs)]

    def _inputs(self, batch: list[int]) -> tuple[torch.Tensor, list[Any], list[dict]]:
        samples = [self.val_set[i] for i in batch]
        outs = [self.eval_tf(_as_detection(s)) for s in samples]
        return torch.stack([o[0] for o in outs]).to(self.ctx.device), samples, [o[2] for o in outs]

    def _predict(self, images: torch.Tensor, captions: list[str], phrases: list, k: int) -> list[dict]:
        with autocast(self.ctx.device, self.p["precision"]):
            return self.model.predict(images, captions, phrases, k)

    def _rec(self) -> tuple[dict[str, float], dict[str, Any], list[dict]]:
        """P@1/5/10 of the top-ranked boxes per expression, and the trivial baselines on the same samples."""
        mine, batches = self._eval_batches()
        rows: list[dict] = []
        bar = Progress(len(mine), f"{self.task.name}: evaluating", unit="sample",
                       enabled=self.opt.progress and self.ctx.is_main)
        start = time.perf_counter()
        for batch in batches:
            images, samples, metas = self._inputs(batch)
            preds = self._predict(images, [s.caption for s in samples], [[[(0, len(s.caption))]] for s in samples], 10)
            for i, s, pred, meta in zip(batch, samples, preds, metas):
                boxes, _ = unmap_predictions(pred["boxes"].float().cpu(), None, meta)
                order = torch.argsort(pred["scores"].float().cpu(), descending=True).numpy()
                rows.append({"index": i, "sample_id": s.sample_id, "image_id": s.image_id, "expression": s.caption,
                             "boxes": boxes[order].round(2).tolist(),
                             "scores": pred["scores"].float().cpu().numpy()[order].round(4).tolist()})
            bar.update(len(batch))
        bar.close()
        self.throughput["eval_images_per_s"] = round(len(mine) / max(time.perf_counter() - start, 1e-9), 3)
        rows = sorted((r for part in gather_objects(rows, self.ctx) for r in part), key=lambda r: r["index"])
        gt = self.val_set.targets()
        ranked = [np.asarray(r["boxes"], dtype=np.float32).reshape(-1, 4) for r in rows]
        metrics = gm.rec_metrics(ranked, gt)
        sizes = self.val_set.sizes()
        baselines = {"whole_image": gm.rec_metrics(gm.largest_box_baseline(sizes), gt),
                     "random_box": gm.rec_metrics(gm.random_box_baseline(sizes, seed=self.opt.seed), gt)}
        return metrics, baselines, rows

    def _ovd(self) -> tuple[dict[str, float], dict[str, Any], list[dict]]:
        """Every class prompted, `chunk_size` names at a time; the best `max_detections` over all chunks; AP."""
        ds, k = self.val_set, int(self.p["max_detections"])
        prompts = [text.detection_prompt([ds.class_names[c] for c in chunk])
                   for chunk in text.chunks(len(ds.class_names), int(self.p["chunk_size"]))]
        offsets = np.cumsum([0] + [len(spans) for _, spans in prompts])
        mine, batches = self._eval_batches()
        results: list[dict] = []
        bar = Progress(len(mine), f"{self.task.name}: evaluating", unit="img",
                       enabled=self.opt.progress and self.ctx.is_main)
        start = time.perf_counter()
        for batch in batches:
            images, samples, metas = self._inputs(batch)
            with autocast(self.ctx.device, self.p["precision"]):
                per_image = self.model.predict_prompts(images, prompts, k)
            for s, meta, preds in zip(samples, metas, per_image):
                boxes = torch.cat([pred["boxes"].float().cpu() for pred in preds])
                scores = torch.cat([pred["scores"].float().cpu() for pred in preds])
                labels = torch.cat([pred["labels"].cpu() + int(offset) for pred, offset in zip(preds, offsets)])
                top = torch.argsort(scores, descending=True)[:k]
                boxes_px, _ = unmap_predictions(boxes[top], None, meta)
                results += to_coco_results(s.image_id, boxes_px, scores[top], labels[top], ds.category_ids)
            bar.update(len(batch))
        bar.close()
        self.throughput["eval_images_per_s"] = round(len(mine) / max(time.perf_counter() - start, 1e-9), 3)
        results = [r for part in gather_objects(results, self.ctx) for r in part]
        metrics = self._ap(results)
        return metrics, {"largest_box": self._ap(self._largest_box())}, results

    def _ap(self, results: list[dict]) -> dict[str, float]:
        ds = self.val_set
        if ds.frequencies is not None:  # LVIS: its own evaluator (APr / APc / APf, 300 detections per image)
            return gm.lvis_evaluate(ds.gt, results, max_dets=int(self.p["max_detections"]))
        novel = ds.novel_ids
        return gm.ovd_metrics(ds.coco, results, ds.base_ids if novel else None, novel or None)

    def _largest_box(self) -> list[dict]:
        """The trivial detector: one whole-image box per image, of the most frequent training class of the same
        name (the first class when no training set names it)."""
        counts = sum((_box_counts(s) for s in self.train_sets), Counter())
        ds = self.val_set
        known = [n for n in ds.class_names if n in counts]
        label = ds.class_names.index(max(known, key=counts.__getitem__)) if known else 0
        return [{"image_id": im["id"], "category_id": ds.category_ids[label],
                 "bbox": [0.0, 0.0, float(im["width"]), float(im["height"])], "score": 1.0}
                for im in ds.gt["images"]]

    # ------------------------------------------------------------ the cell
    def run(self) -> PluginResult:
        summary, key = self._train_or_load()
        self.model.eval()
        rec = self.val_set.kind == "rec"
        metrics, baselines, predictions = self._rec() if rec else self._ovd()
        artifacts = finetune.publish(self.task, metrics, predictions, self.opt, self.ctx)
        main = self.task.metric["main"]
        details = {
            "engine": self.p["engine"],
            "training": summary,
            "training_key": key,
            "baselines": baselines,
            "data": {"train": [s.identity for s in self.train_sets], "val": self.val_set.identity,
                     "train_report": [s.report for s in self.train_sets], "val_report": self.val_set.report},
            "patch_rule": (f"image resized by {self.backbone.meta.patch_size}/{VITDET_STRIDE}: token grid = "
                           f"image / {VITDET_STRIDE} for every family"),
        }
        selection = {"rule": "none: one fixed recipe (MM-Grounding-DINO), no search", "split": None,
                     "chosen": {"lr": self.p["lr"], "engine": self.p["engine"]}}
        self.throughput["train_images_per_s"] = summary.get("train_images_per_s", 0.0)
        text_info = {"role": "text_encoder", "name": str(self.p["text_encoder"]),
                     "weights_id": self.text_encoder.weights_id}
        return PluginResult(metrics, main, selection, self.throughput, details, models=[text_info],
                            artifacts=artifacts)


PLUGIN = GroundingPlugin()
