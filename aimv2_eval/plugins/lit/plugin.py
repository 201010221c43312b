"""The `lit` task plugin (paper Section 4.1, Table 5): zero-shot classification through LiT.

mode: train       the backbone stays frozen; an attention-pooling head, two projections, the temperature (and the
                  text tower, unless `text.trainable: false`; LiT's default is an unlocked text tower) learn a
                  contrastive loss on image-caption pairs; then zero-shot evaluation. With `cache: true` (small
                  data) frozen parts run once per image / caption; with `cache: false` they stream every step.
mode: checkpoint  direct zero-shot evaluation of a released LiT checkpoint (Apple's or transformers' key scheme);
                  the run's backbone must be the checkpoint's image tower (checked where the weights line up).

Each evaluation set yields top1{_name} and top5{_name} in percent; its chance level goes into the record's details.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
import torch

from aimv2_eval import validate as v
from aimv2_eval.backbones import build_eval_transform
from aimv2_eval.data.sources import LabelledImages
from aimv2_eval.data.threads import one_thread
from aimv2_eval.engine import (
    Checkpointer,
    ParamSet,
    Progress,
    Schedule,
    autocast,
    batch_slices,
    build_optimizer,
    check_finite,
    clip_grad,
    epoch_permutation,
    param_groups,
)
from aimv2_eval.errors import UserError
from aimv2_eval.launch.distributed import DistContext, all_reduce_sum, shard
from aimv2_eval.plugins.base import Plugin, PluginResult, RunOptions
from aimv2_eval.plugins.lit.checkpoint import LiTCheckpoint, build_lit, read_lit
from aimv2_eval.plugins.lit.data import EvalSet, LitData, PairSet, load_lit_data
from aimv2_eval.plugins.lit.model import LOSSES, LiT
from aimv2_eval.plugins.lit.zeroshot import accuracy_counts, build_classifier, resolve_templates, zero_shot_logits
from aimv2_eval.text import create_text_encoder

MODES = ("train", "checkpoint")
# Training defaults where a task says nothing. The paper states no LiT hyperparameters (Table 5 gives only the number
# of LiT pairs, 3B); these follow CLIP/LiT practice (AdamW, linear warmup, cosine decay) sized for small runs.
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 30,
    "batch_size": 128,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "betas": [0.9, 0.98],
    "warmup_fraction": 0.1,
    "grad_clip": 1.0,
    "projection_dim": 128,
    "head_heads": None,
    "loss": "softmax",
    "cache": True,
    "text": {"kind": "hf", "source": "minilm", "trainable": False},
}


SCENE_EVAL_SETS = ("unseen", "unseen_all", "seen")  # data.scene_object_data's evaluation sets


def _text_spec(value: Any, where: str) -> Any:
    if not isinstance(value, str | dict):
        raise v.fail(where, "a text encoder name or a mapping {kind, source, trainable, ...}", value)
    return value


def _name_or_list(value: Any, where: str) -> Any:
    """A named set ('openai_imagenet', 'imagenet': checked where it is resolved) or a list of strings."""
    return value if isinstance(value, str) else v.string_list(value, where)


def check_protocol(task: Any, p: dict[str, Any]) -> None:
    """Types and ranges of every field LiT reads, before any work (a misspelt key would fall back to a default)."""
    where = v.at(task, "protocol")
    v.known_keys(p, ("mode", "checkpoint", "classnames", "templates", "eval_batch_size", "limit", *TRAIN_DEFAULTS),
                 where)
    v.fields(p, {
        **v.TRAINING_FIELDS, "mode": partial(v.string, choices=MODES), "checkpoint": v.optional(v.string),
        "templates": _name_or_list, "classnames": _name_or_list, "warmup_fraction": v.probability,
        "grad_clip": v.nonneg_number, "projection_dim": v.positive_int, "head_heads": v.optional(v.positive_int),
        "loss": partial(v.string, choices=LOSSES), "cache": v.boolean, "text": _text_spec,
    }, where)
    if task.data.get("source") != "scene_objects" and "classnames" not in p:  # load_lit_data builds prompts from it
        raise UserError(f"{where}.classnames is missing; give the class names in label order (a list, or 'imagenet')")


class _Images(torch.utils.data.Dataset):
    """(image tensor, caption or label, position) for a DataLoader; `get(i)` returns (PIL image, target)."""

    def __init__(self, get: Callable[[int], tuple[Any, Any]], n: int, transform: Callable) -> None:
        self.get, self.n, self.transform = get, n, transform

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any, int]:
        image, target = self.get(i)
        with one_thread():
            return self.transform(image), target, i


class _PairItem:
    def __init__(self, pairs: PairSet) -> None:
        self.pairs = pairs

    def __call__(self, i: int) -> tuple[Any, str]:
        return self.pairs[i]


class _LabelledItem:
    def __init__(self, split: LabelledImages) -> None:
        self.split = split

    def __call__(self, i: int) -> tuple[Any, int]:
        return self.split.image(i), int(self.split.labels[i])


class LitPlugin(Plugin):
    name = "lit"
    summary = "LiT: frozen backbone + attention-pool head, contrastive text tower; zero-shot top-1/top-5"

    # ------------------------------------------------------------ protocol
    def resolve(self, task: Any, options: RunOptions, backbone: Any) -> dict[str, Any]:
        p = json.loads(json.dumps(task.protocol))
        check_protocol(task, p)
        mode = p.setdefault("mode", "train")
        if mode not in MODES:
            raise UserError(f"task {task.name}: protocol.mode must be one of {', '.join(MODES)}, got {mode!r}")
        if "templates" not in p:
            raise UserError(f"task {task.name}: protocol.templates is missing (a list, or 'openai_imagenet')")
        resolve_templates(p["templates"])  # validates
        if mode == "checkpoint":
            if not p.get("checkpoint"):
                raise UserError(f"task {task.name}: mode checkpoint needs protocol.checkpoint (a folder, file or hub id)")
        else:
            for key, value in TRAIN_DEFAULTS.items():
                p.setdefault(key, json.loads(json.dumps(value)))
            if p["loss"] not in LOSSES:
                raise UserError(f"task {task.name}: protocol.loss must be one of {', '.join(LOSSES)}")
            if options.epochs is not None:
                p["epochs"] = options.epochs
            if options.batch_size is not None:
                p["batch_size"] = options.batch_size
        # embedded scenes are rendered at the tower's input size (unknown for a checkpoint on disk until it is read)
        p["image_size"] = int(backbone.image_size)
        if options.limit is not None:
            p["limit"] = options.limit
        return p

    def metric_names(self, task: Any, protocol: dict[str, Any]) -> set[str]:
        # top1 / top5 of each evaluation set, suffixed with its name (_score); load_lit_data names the sets
        sets = SCENE_EVAL_SETS if task.data.get("source") == "scene_objects" else ("",)
        return {f"{m}_{s}" if s else m for m in ("top1", "top5") for s in sets}

    def load_data(self, task: Any, protocol: dict[str, Any], options: RunOptions) -> tuple[LitData, LiTCheckpoint | None]:
        data = load_lit_data(task.data, protocol, options.data_root, protocol.get("limit"), options.seed)
        ckpt = read_lit(protocol["checkpoint"]) if protocol["mode"] == "checkpoint" else None
        return data, ckpt

    def run(self, backbone: Any, task: Any, protocol: dict[str, Any], data: tuple[LitData, LiTCheckpoint | None],
            options: RunOptions, ctx: DistContext) -> PluginResult:
        return _LitRun(backbone, task, protocol, data[0], data[1], options, ctx).run()


class _LitRun:
    def __init__(self, backbone: Any, task: Any, protocol: dict[str, Any], data: LitData, ckpt: LiTCheckpoint | None,
                 options: RunOptions, ctx: DistContext) -> None:
        self.backbone, self.task, self.p, self.data, self.ckpt = backbone, task, protocol, data, ckpt
        self.opt, self.ctx, self.device = options, ctx, ctx.device
        self.transform = build_eval_transform(backbone.preprocess)
        self.throughput: dict[str, float] = {}
        self.details: dict[str, Any] = dict(data.details)
        self.history: list[float] = []

    # ------------------------------------------------------------ helpers
    def _bar(self, total: int, desc: str) -> Progress:
        return Progress(total, desc, unit="img", enabled=self.opt.progress and self.ctx.is_main)

    def _loader(self, dataset: torch.utils.data.Dataset, batches: list[list[int]]) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=self.opt.workers,
                                           collate_fn=_collate)

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(self.device, self.opt.precision):
            return self.model.image_tokens(images.to(self.device, non_blocking=True)).float()

    # ------------------------------------------------------------ model
    def _build(self) -> None:
        if self.ckpt is not None:
            self.model = build_lit(self.ckpt, self.backbone).requires_grad_(False)  # evaluated as released
            self.details["checkpoint"] = {"source": self.p["checkpoint"], "scheme": self.ckpt.scheme,
                                          "weights": str(self.ckpt.weights_path)}
            self.text_frozen = True
        else:
            if self.ctx.distributed:
                raise UserError("LiT training runs in one process; launch it without torchrun (evaluation of a "
                                "checkpoint may use torchrun)")
            # a registry name (frozen) or a protocol block {kind: aimv2 | hf, ..., trainable} (LiT: unlocked by default)
            text_spec = self.p["text"]
            trainable = isinstance(text_spec, dict) and bool(text_spec.get("trainable", True))
            compact = isinstance(text_spec, dict) and text_spec.get("tokenizer") == "compact"
            text = create_text_encoder(text_spec, trainable=trainable, corpus=self._captions() if compact else None)
            self.text_frozen = not trainable
            self.model = LiT(self.backbone, self.backbone.meta.embed_dim, text, int(self.p["projection_dim"]),
                             self.p.get("head_heads"), self.p["loss"])
        self.model.to(self.device)
        text_spec = self.p.get("text") or {"kind": "aimv2", "from": "checkpoint"}
        self.details["text_tower"] = dict(text_spec) if isinstance(text_spec, dict) else {"name": text_spec}
        self.details["text_encoder"] = self.model.text_tower.describe()  # name and weights id of the text model
        self.details["trainable_params"] = sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def _captions(self) -> list[str]:
        pairs = self.data.train
        assert pairs is not None
        captions = getattr(pairs, "captions", None)
        return captions() if callable(captions) else [pairs[i][1] for i in range(len(pairs))]

    # ------------------------------------------------------------ training
    def _cache_train(self) -> tuple[torch.Tensor, list[str]]:
        """Frozen tokens of every training image (the tower is locked and there is no augmentation)."""
        pairs = self.data.train
        assert pairs is not None
        bs = int(self.p["batch_size"])
        batches = [list(range(i, min(i + bs, len(pairs)))) for i in range(0, len(pairs), bs)]
        chunks, captions = [], []
        start = time.perf_counter()
        bar = self._bar(len(pairs), "LiT: caching image tokens")
        for x, caps, _ in self._loader(_Images(_PairItem(pairs), len(pairs), self.transform), batches):
            chunks.append(self._tokens(x).cpu())
            captions += caps
            bar.update(len(caps))
        bar.close()
        self.throughput["encode_images_per_s"] = round(len(pairs) / max(time.perf_counter() - start, 1e-9), 2)
        return torch.cat(chunks), captions

    def _text_features(self, captions: list[str], cache: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """Text-tower output for captions; with `cache`, a frozen tower's outputs are kept per caption."""
        model = self.model
        if not self.text_frozen or cache is None:
            batch = {k: v.to(self.device) for k, v in model.text_tower.tokenize(captions).items()}
            with torch.set_grad_enabled(not self.text_frozen):
                return model.text_features(batch)
        missing = sorted({c for c in captions if c not in cache})
        bs = 256
        for i in range(0, len(missing), bs):
            chunk = missing[i : i + bs]
            batch = {k: v.to(self.device) for k, v in model.text_tower.tokenize(chunk).items()}
            with torch.no_grad():
                feats = model.text_features(batch).float()
            cache.update(zip(chunk, feats))
        return torch.stack([cache[c] for c in captions])

    def _optimizer(self) -> torch.optim.Optimizer:
        # biases, gains, the query token, the temperature and the logit bias are not decayed (CLIP practice)
        groups = param_groups([ParamSet(self.model, no_weight_decay=["*cls_token"])], float(self.p["weight_decay"]))
        return build_optimizer(groups, lr=float(self.p["lr"]), betas=[float(b) for b in self.p["betas"]])

    def _epoch_batches(self, n: int, epoch: int) -> list[list[int]]:
        # LiT's own seed stride keeps the data order (and so the results) of records made before the engine;
        # a last batch of one is dropped: a contrastive batch needs negatives
        order = epoch_permutation(n, self.opt.seed, epoch, seed_stride=100_003)
        return batch_slices(order, int(self.p["batch_size"]), drop_last_below=2)

    def _train(self) -> None:
        pairs = self.data.train
        assert pairs is not None
        if len(pairs) < 2:
            raise UserError("LiT training needs at least two image-caption pairs")
        cached = bool(self.p["cache"])
        tokens, captions = self._cache_train() if cached else (None, None)
        text_cache: dict[str, torch.Tensor] | None = {} if cached else None
        optim = self._optimizer()
        epochs = int(self.p["epochs"])
        steps_per_epoch = len(self._epoch_batches(len(pairs), 0))
        total = epochs * steps_per_epoch
        schedule = Schedule(optim, total, max(1, int(round(float(self.p["warmup_fraction"]) * total))))
        checkpointer = Checkpointer(self.opt.checkpoint, fingerprint=json.loads(json.dumps(self.p)))
        start_epoch, self.history = checkpointer.resume(self.model, optim, self.opt.resume)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.model.train()
        if self.text_frozen:
            self.model.text_tower.eval()
        start, steps = time.perf_counter(), 0
        bar = Progress(total - start_epoch * steps_per_epoch, "LiT: training",
                       enabled=self.opt.progress and self.ctx.is_main, epochs=(start_epoch, epochs))
        for epoch in range(start_epoch, epochs):
            batches = self._epoch_batches(len(pairs), epoch)
            stream = self._batches(pairs, batches, tokens, captions)
            losses = []
            for i, (tok, caps) in enumerate(stream):
                step = epoch * steps_per_epoch + i
                schedule.set(step)
                image_embeds = self.model.embed_tokens(tok.to(self.device))
                text_embeds = self.model.text_projector(self._text_features(caps, text_cache))
                uniq: dict[str, int] = {}
                pair_ids = torch.tensor([uniq.setdefault(c, len(uniq)) for c in caps], device=self.device)
                loss = self.model.loss(image_embeds, text_embeds, pair_ids)
                check_finite(loss, step, "lower protocol.lr")
                optim.zero_grad(set_to_none=True)
                loss.backward()
                clip_grad(trainable, float(self.p["grad_clip"]))
                optim.step()
                losses.append(loss.item())
                steps += 1
                bar.update(1, loss=f"{losses[-1]:.3f}")
            self.history.append(round(float(np.mean(losses)), 5))
            bar.epoch(epoch + 1, epochs, loss=f"{self.history[-1]:.4f}",
                      **{"steps/s": f"{steps / max(time.perf_counter() - start, 1e-9):.2f}"})
            # only what training changes: the locked image tower and a frozen text tower are rebuilt from sources
            checkpointer.save_epoch(self.model, optim, epoch + 1, self.history)
        bar.close()
        self.throughput["train_steps_per_s"] = round(steps / max(time.perf_counter() - start, 1e-9), 2)
        self.model.eval()

    def _batches(self, pairs: PairSet, batches: list[list[int]], tokens: torch.Tensor | None,
                 captions: list[str] | None) -> Iterator[tuple[torch.Tensor, list[str]]]:
        if tokens is not None and captions is not None:
            for idx in batches:
                yield tokens[idx], [captions[i] for i in idx]
            return
        for x, caps, _ in self._loader(_Images(_PairItem(pairs), len(pairs), self.transform), batches):
            yield self._tokens(x), list(caps)

    # ------------------------------------------------------------ zero-shot evaluation
    @torch.no_grad()
    def _embed_split(self, split: LabelledImages) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Image embeddings and labels of this rank's share of a split."""
        mine = shard(list(range(len(split))), self.ctx)
        bs = int(self.p.get("eval_batch_size", self.p.get("batch_size", 256)))
        batches = [mine[i : i + bs] for i in range(0, len(mine), bs)]
        embeds, labels = [], []
        start = time.perf_counter()
        bar = self._bar(len(mine), f"LiT: zero-shot {split.identity[:32]}")
        for x, y, _ in self._loader(_Images(_LabelledItem(split), len(split), self.transform), batches):
            with autocast(self.device, self.opt.precision):
                embeds.append(self.model.embed_images(x.to(self.device)).float().cpu())
            labels.append(torch.as_tensor(y))
            bar.update(len(y))
        bar.close()
        self.throughput["eval_images_per_s"] = round(len(mine) / max(time.perf_counter() - start, 1e-9), 2)
        if not embeds:
            return torch.zeros(0, self.model.image_projector.out_features), torch.zeros(0, dtype=torch.long), mine
        return torch.cat(embeds), torch.cat(labels).long(), mine

    def _evaluate(self) -> dict[str, float]:
        templates = resolve_templates(self.p["templates"])
        metrics: dict[str, float] = {}
        chance: dict[str, float] = {}
        classifiers: dict[tuple[str, ...], torch.Tensor] = {}
        embedded: dict[str, tuple[torch.Tensor, torch.Tensor, list[int]]] = {}
        for ev in self.data.evals:
            key = tuple(ev.classnames)
            if key not in classifiers:
                classifiers[key] = build_classifier(self.model, ev.classnames, templates, self.device).cpu()
            if ev.split.identity not in embedded:
                embedded[ev.split.identity] = self._embed_split(ev.split)
            emb, labels, _ = embedded[ev.split.identity]
            metrics.update(_score(ev, emb, labels, classifiers[key], self.ctx))
            chance[_metric(ev, "top1")] = round(100.0 / ev.num_candidates, 4)
        self.details["chance_top1"] = chance
        self.details["num_templates"] = len(templates)
        return metrics

    # ------------------------------------------------------------ run
    def run(self) -> PluginResult:
        self._build()
        if self.ckpt is None:
            self._train()
            self.details["train_loss_per_epoch"] = self.history
        self.details["logit_scale"] = round(float(self.model.logit_scale().detach()), 4)
        metrics = self._evaluate()
        main = self.task.metric["main"]
        if main not in metrics:
            raise UserError(f"task {self.task.name}: metric.main {main!r} is not produced; choose one of "
                            f"{', '.join(sorted(metrics))}")
        selection = {
            "rule": "none: one fixed protocol, no hyperparameter search" if self.ckpt is None
            else "none: released checkpoint evaluated as is",
            "split": None,
            "chosen": {"lr": self.p.get("lr"), "wd": self.p.get("weight_decay")},
        }
        text = self.details["text_encoder"]
        return PluginResult(metrics=metrics, main_metric=main, selection=selection, throughput=self.throughput,
                            details=self.details,
                            models=[{"role": "text_encoder", "name": text["name"], "weights_id": text["weights_id"]}])


def _metric(ev: EvalSet, name: str) -> str:
    return f"{name}_{ev.name}" if ev.name else name


def _score(ev: EvalSet, embeds: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor,
           ctx: DistContext) -> dict[str, float]:
    """Top-1 / top-5 (%) of one evaluation set, with counts summed over ranks."""
    cand = ev.candidates
    weights = classifier if cand is None else classifier[:, cand]
    if cand is not None:
        remap = torch.full((len(ev.classnames),), -1, dtype=torch.long)
        remap[torch.tensor(cand)] = torch.arange(len(cand))
        labels = remap[labels]
        if (labels < 0).any():
            raise UserError(f"evaluation set {ev.name!r} holds images of classes outside its candidates")
    counts = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # on the device: NCCL reduces CUDA tensors
    if len(labels):
        counts += accuracy_counts(zero_shot_logits(embeds, weights), labels).double().to(ctx.device)
    all_reduce_sum(counts, ctx)
    n = len(ev.split)
    return {_metric(ev, "top1"): round(100.0 * float(counts[0]) / n, 4),
            _metric(ev, "top5"): round(100.0 * float(counts[1]) / n, 4)}


def _collate(batch: list[tuple[torch.Tensor, Any, int]]) -> tuple[torch.Tensor, list[Any], list[int]]:
    images, targets, idx = zip(*batch)
    return torch.stack(images), list(targets), list(idx)


PLUGIN = LitPlugin()
