"""The `llava` task plugin (paper Section 4.3, Tables 7, 9, C1-C3): a frozen registry vision tower, a 2-layer MLP
connector and a causal LM, instruction-tuned in one stage (train.py), then evaluated by generation on a benchmark
(evaluate.py).

One training serves every benchmark: the tuned connector + LM are kept under `$AIMV2_EVAL_CACHE/llava/<key>`, where
the key hashes everything that defines the training (backbone and its weights, tower layer and tiling, LM, recipe,
seed); the 13 benchmark cells of one backbone train once. The record names the key, the LM and the training's
loss curve; answers and scores of every sample go to `samples.jsonl` in the cell's output folder.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aimv2_eval import validate as v
from aimv2_eval.config import cache_home
from aimv2_eval.engine import Checkpointer, Progress, autocast
from aimv2_eval.errors import UserError
from aimv2_eval.io import torch_save_atomic, write_text_atomic
from aimv2_eval.launch.distributed import DistContext, gather_objects, shard
from aimv2_eval.metrics import multimodal as mm
from aimv2_eval.plugins.base import Plugin, PluginResult, RunOptions
from aimv2_eval.plugins.llava import lm as lms
from aimv2_eval.plugins.llava.evaluate import RECORD_KEY, Evaluator, summarise
from aimv2_eval.plugins.llava.model import LlavaModel, VisionTower, tile
from aimv2_eval.plugins.llava.prompts import encode_conversation
from aimv2_eval.plugins.llava.train import full_state, train

KINDS = ("vqa", "short", "mc", "yes_no", "caption")
TRAIN_KEYS = ("iterations", "batch_size", "lm_lr", "connector_lr", "min_lr", "weight_decay", "betas", "grad_clip",
              "warmup_iters")
DEFAULTS: dict[str, Any] = {"max_length": 2048, "eval_batch_size": 16}


# every key each block may hold, and the checks of its values (train.data is the data source's own business)
BLOCKS: dict[str, dict[str, v.Check]] = {
    "": {"tower": v.mapping, "lm": v.mapping, "train": v.mapping, "eval": v.mapping, "max_length": v.positive_int,
         "eval_batch_size": v.positive_int, "limit": v.optional(v.positive_int)},
    "tower": {"layer": v.integer, "crop": v.optional(v.positive_int), "grid": v.positive_int, "thumbnail": v.boolean},
    "lm": {"source": v.optional(v.string), "config": v.optional(v.mapping), "chat_template": v.string},
    "train": {"data": v.mapping, "iterations": v.positive_int, "batch_size": v.positive_int,
              "lm_lr": v.positive_number, "connector_lr": v.positive_number, "min_lr": v.nonneg_number,
              "weight_decay": v.nonneg_number, "betas": v.betas, "grad_clip": v.optional(v.nonneg_number),
              "warmup_iters": v.nonneg_int, "grad_checkpointing": v.boolean, "fsdp": v.boolean,
              "cache_features": v.boolean, "log_every": v.positive_int, "micro_batch": v.optional(v.positive_int)},
    "eval": {"prompt": v.text, "metric": partial(v.string, choices=RECORD_KEY),
             "kind": partial(v.string, choices=KINDS), "max_new_tokens": v.positive_int},
}


def check_protocol(task: Any, p: dict[str, Any]) -> None:
    """Types and ranges of every field the LLaVA recipe reads, before any work (unknown keys: typos)."""
    for block, checks in BLOCKS.items():
        where = v.at(task, f"protocol.{block}" if block else "protocol")
        values = p[block] if block else p
        v.known_keys(values, checks, where)
        v.fields(values, checks, where)


class LlavaPlugin(Plugin):
    name = "llava"
    summary = "LLaVA-style instruction tuning (frozen tower + MLP connector + causal LM), generation benchmarks"

    def resolve(self, task: Any, options: RunOptions, backbone: Any) -> dict[str, Any]:
        p = {**DEFAULTS, **json.loads(json.dumps(task.protocol))}
        for block in ("tower", "lm", "train", "eval"):
            if not isinstance(p.get(block), dict):
                raise UserError(f"task {task.name}: protocol.{block} must be a mapping (see tasks/_llava_sft.yaml)")
        check_protocol(task, p)
        missing = [f"train.{k}" for k in TRAIN_KEYS if k not in p["train"]]
        missing += [f"eval.{k}" for k in ("prompt", "metric", "kind", "max_new_tokens") if k not in p["eval"]]
        if missing:
            raise UserError(f"task {task.name}: protocol is missing {', '.join(missing)}")
        if not backbone.is_vit:
            raise UserError(f"{backbone.name} is a {backbone.family} network: the LLaVA tower reads ViT tokens")
        lm = p["lm"]
        if bool(lm.get("source")) == bool(lm.get("config")):
            raise UserError(f"task {task.name}: protocol.lm needs exactly one of `source` (hub id or folder) or "
                            "`config` (a Llama config trained from scratch)")
        tower = p["tower"]
        tower.setdefault("layer", -2)
        tower.setdefault("grid", 1)
        tower.setdefault("thumbnail", False)
        tower["crop"] = int(tower.get("crop") or backbone.image_size)
        if tower["crop"] % backbone.patch_size:
            raise UserError(f"tower.crop {tower['crop']} is not a multiple of the patch size {backbone.patch_size}")
        crops = tower["grid"] ** 2 + (1 if tower["thumbnail"] and tower["grid"] > 1 else 0)
        p["image_tokens"] = crops * (tower["crop"] // backbone.patch_size) ** 2
        if int(p["max_length"]) < p["image_tokens"] + 32:
            raise UserError(f"task {task.name}: max_length {p['max_length']} leaves no room for text after "
                            f"{p['image_tokens']} image tokens; raise protocol.max_length")
        if options.limit is not None:
            p["limit"] = int(options.limit)
        if options.batch_size is not None:
            p["train"]["batch_size"] = int(options.batch_size)
        p["precision"] = options.precision
        return p

    def metric_names(self, task: Any, protocol: dict[str, Any]) -> set[str]:
        # summarise() records the eval metric under its paper name; run() adds the count of failed samples
        return {RECORD_KEY[protocol["eval"]["metric"]], "failed_samples"}

    def load_data(self, task: Any, protocol: dict[str, Any], options: RunOptions) -> tuple[Any, Any, Any]:
        from aimv2_eval.data import multimodal as data

        evalset = data.open_mm_split(task.data, "eval", options.data_root)
        tdata = protocol["train"].get("data")
        if not isinstance(tdata, dict) or "source" not in tdata:
            raise UserError(f"task {task.name}: protocol.train.data needs a `source` (scenes, llava_json or hf)")
        if tdata["source"] == "scenes":
            convs = data.scene_conversations(int(tdata["n"]), int(tdata["seed"]), int(tdata.get("image_size", 64)),
                                             int(tdata.get("max_objects", 4)), tdata.get("turns_per_conversation"))
        else:
            root = str(data.data_root(options.data_root))
            convs = data.open_conversations(str(tdata["json"]).replace("{root}", root),
                                            str(tdata.get("images", "")).replace("{root}", root) or None)
        if not convs:
            raise UserError(f"task {task.name}: the training data is empty")
        source_cfg = task.data.get(task.data.get("source")) or {}
        # the answer prior's data: a train split where the task has one (the embedded tasks)
        prior_source = data.open_mm_split(task.data, "train", options.data_root) if "train" in source_cfg else None
        return evalset, convs, prior_source

    def run(self, backbone: Any, task: Any, protocol: dict[str, Any], data: tuple[Any, Any, Any], options: RunOptions,
            ctx: DistContext) -> PluginResult:
        return _LlavaRun(backbone, task, protocol, data, options, ctx).run()


def training_key(backbone: Any, p: dict[str, Any], seed: int) -> str:
    """What defines the tuned model: backbone + weights, tower, LM, recipe, seed (not the benchmark)."""
    what = {"backbone": backbone.meta.name, "weights": backbone.weights_id, "tower": p["tower"], "lm": p["lm"],
            "train": p["train"], "max_length": p["max_length"], "precision": p["precision"], "seed": seed}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_tuned(model: LlavaModel, state: dict[str, torch.Tensor], path: Path) -> None:
    """Connector + LM weights into `model`; anything missing but the (registry-loaded) tower is an error, so an
    untrained connector is never evaluated by accident."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("tower.")]
    if missing or result.unexpected_keys:
        raise UserError(f"{path} does not match this model ({len(missing)} missing, {len(result.unexpected_keys)} "
                        "unexpected tensors); delete it to retrain")


class _LlavaRun:
    def __init__(self, backbone: Any, task: Any, p: dict[str, Any], data: tuple[Any, Any, Any], options: RunOptions,
                 ctx: DistContext) -> None:
        self.backbone, self.task, self.p, self.opt, self.ctx = backbone, task, p, options, ctx
        self.evalset, self.convs, self.prior_source = data
        self.tower = VisionTower(backbone, int(p["tower"]["layer"])).to(ctx.device)
        pre = backbone.preprocess
        self.mean, self.std = torch.tensor(pre.mean).view(3, 1, 1), torch.tensor(pre.std).view(3, 1, 1)
        self.fill = tuple(int(round(255 * m)) for m in pre.mean)  # LLaVA pads with the image mean
        self.train_features: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------ images
    def encode_images(self, images: list[Any]) -> list[torch.Tensor]:
        """Tower features of each image: its crops encoded in one batch, tokens concatenated in reading order."""
        t = self.p["tower"]
        crops = [tile(im, t["crop"], t["grid"], t["thumbnail"], self.fill) for im in images]
        flat = [torch.from_numpy(np.asarray(c, dtype=np.float32) / 255.0).permute(2, 0, 1) for cs in crops for c in cs]
        x = (torch.stack(flat) - self.mean) / self.std
        with autocast(self.ctx.device, self.p["precision"]):
            feats = self.tower(x.to(self.ctx.device)).float()
        out, k = [], 0
        for cs in crops:
            out.append(feats[k: k + len(cs)].reshape(-1, feats.shape[-1]))
            k += len(cs)
        return out

    def _encode_train(self, keys: list[int]) -> list[torch.Tensor | None]:
        """Tower features of training conversations' images (by position in the training data); with
        train.cache_features each image is encoded once and kept in memory (the tower is frozen)."""
        keep = bool(self.p["train"].get("cache_features"))
        convs = [self.convs[k] for k in keys]
        todo = {c.image_id: c for c in convs if c.has_image and c.image_id not in self.train_features}
        fresh = dict(zip(todo, self.encode_images([c.image for c in todo.values()]))) if todo else {}
        if keep:
            self.train_features.update(fresh)
        found = self.train_features if keep else fresh
        return [found[c.image_id] if c.has_image else None for c in convs]

    # ------------------------------------------------------------ model
    def _build(self) -> tuple[LlavaModel, Any, dict[str, Any]]:
        lm_spec = self.p["lm"]
        if lm_spec.get("source"):
            lm, tok = lms.load_pretrained_lm(str(lm_spec["source"]))
            info = {"role": "language_model", "name": str(lm_spec["source"]), "weights_id": str(lm_spec["source"])}
        else:
            texts = [x for c in self.convs for turn in c.turns for x in turn] + [self.p["eval"]["prompt"]]
            tok = lms.word_tokenizer(texts)
            lm = lms.build_config_lm(dict(lm_spec["config"]), tok, seed=self.opt.seed)
            info = {"role": "language_model", "name": "llama-from-config", "weights_id": "random-init, trained here"}
        lms.set_chat_template(tok, str(lm_spec.get("chat_template", "tokenizer")), info["name"])
        torch.manual_seed(self.opt.seed)  # the connector's initialisation
        model = LlavaModel(self.tower, lm).to(self.ctx.device)
        return model, tok, info

    def _train_or_load(self, model: LlavaModel, tok: Any) -> tuple[LlavaModel, dict[str, Any], str]:
        """The tuned model (trained here, or the cached one of an earlier cell with the same training key)."""
        key = training_key(self.backbone, self.p, self.opt.seed)
        path = cache_home() / "llava" / key / "model.pt"
        if path.is_file():
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise UserError(f"cannot read the tuned model {path} ({type(exc).__name__}); delete it to retrain") from None
            load_tuned(model, state["model"], path)
            return model, {**state["summary"], "reused": True}, key
        n, max_length = self.p["image_tokens"], int(self.p["max_length"])
        samples = []
        for k, c in enumerate(self.convs):
            ids, labels = encode_conversation(tok, c.turns, n, c.has_image)
            samples.append((ids[:max_length], labels[:max_length], k))
        truncated = sum(len(s[0]) == max_length for s in samples)
        ckpt = Checkpointer(self.opt.checkpoint, fingerprint={"training_key": key})
        summary = train(model, samples, self._encode_train, self.p, self.ctx, ckpt, self.opt.resume,
                        self.opt.progress, self.opt.seed)
        summary.update(conversations=len(samples), truncated_at_max_length=int(truncated))
        state = full_state(model)
        if self.ctx.distributed and self.p["train"].get("fsdp"):  # evaluate on an unsharded copy
            model = self._build()[0]
            load_tuned(model, state, path)
        if self.ctx.is_main:
            torch_save_atomic(path, {"model": state, "summary": summary})
        return model, {**summary, "reused": False}, key

    # ------------------------------------------------------------ baselines
    def _answer_prior(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The trivial answerer: the most frequent answer per question type (captions: the most frequent caption),
        fitted on the task's training split when it has one (embedded), else on the evaluation answers themselves
        (an optimistic prior, labelled as such). Reads samples without decoding their images."""
        from aimv2_eval.plugins.llava.evaluate import score

        e = self.p["eval"]
        source = self.prior_source if self.prior_source is not None else self.evalset
        pairs = []
        for i in range(len(source)):
            try:
                m = source.meta(i)
            except UserError:
                continue
            pairs += [(m.question_type, a) for a in m.answers[:1]]
        if not pairs:
            return {"fitted_on": "nothing: no sample has an answer"}
        prior = mm.answer_prior(pairs)
        guessed = []
        for r in rows:
            if not r["answers"]:
                continue
            m = self.evalset.meta(r["index"])
            guess = prior.get(m.question_type, prior["*"])
            guessed.append({**r, "prediction": guess, "score": score(e["metric"], guess, m)})
        fitted_on = "train split" if self.prior_source is not None else "evaluation answers (optimistic)"
        return {**(summarise(e["metric"], guessed) if guessed else {}), "fitted_on": fitted_on}

    # ------------------------------------------------------------ the cell
    def run(self) -> PluginResult:
        model, tok, lm_info = self._build()
        model, summary, key = self._train_or_load(model, tok)
        model.eval()
        indices = list(range(len(self.evalset)))
        if self.p.get("limit"):
            indices = indices[: int(self.p["limit"])]
        mine = shard(indices, self.ctx)
        bar = Progress(len(mine), f"{self.task.name}: answering", unit="sample",
                       enabled=self.opt.progress and self.ctx.is_main)
        evaluator = Evaluator(model, tok, self.encode_images, self.p["image_tokens"], self.p, self.ctx.device)
        rows, throughput = evaluator.run(self.evalset, mine, int(self.p["eval_batch_size"]), bar)
        bar.close()
        rows = sorted((r for part in gather_objects(rows, self.ctx) for r in part), key=lambda r: r["index"])
        e = self.p["eval"]
        artifacts = {}
        if self.ctx.is_main and self.opt.output_dir is not None:  # first: the answers survive a failing summary
            write_text_atomic(self.opt.output_dir / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
            artifacts["samples"] = "samples.jsonl"
        metrics = summarise(e["metric"], [r for r in rows if r["answers"]])
        metrics["failed_samples"] = float(sum(1 for r in rows if r.get("error")))
        baseline = self._answer_prior(rows)
        main = self.task.metric["main"]
        if main not in metrics:
            raise UserError(f"task {self.task.name}: metric.main {main!r} is not produced; choose one of "
                            f"{', '.join(sorted(metrics))}")
        details = {"training": summary, "training_key": key, "baseline_answer_prior": baseline,
                   "image_tokens": self.p["image_tokens"], "samples": len(rows),
                   "images_encoded": throughput.pop("images_encoded")}
        selection = {"rule": "none: one fixed recipe (Table C1), greedy decoding", "split": None,
                     "chosen": {"lm_lr": self.p["train"]["lm_lr"], "connector_lr": self.p["train"]["connector_lr"]}}
        throughput["train_tokens_per_s"] = summary.get("train_tokens_per_s", 0.0)
        return PluginResult(metrics, main, selection, throughput, details, models=[lm_info], artifacts=artifacts)


PLUGIN = LlavaPlugin()
