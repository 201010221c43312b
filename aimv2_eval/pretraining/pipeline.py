"""One pretraining run from a resolved recipe: source, tokenizer, model, samples, the loop, the export.

The glue between the data pipeline (`aimv2_eval.data`) and the loop (`aimv2_eval.core.pretrain`); the
`aimv2-eval pretrain` command and the benchmarks call `run`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from aimv2_eval.core.pretrain import NativeConfig, OptimConfig, PretrainConfig, init_from, pretrain, reinit_linears
from aimv2_eval.data.pairs import build_source
from aimv2_eval.errors import UserError
from aimv2_eval.pretraining.export import finish_export
from aimv2_eval.pretraining.recipe import build_model, build_tokenizer_for, peak_lr
from aimv2_eval.pretraining.samples import Augment, Sampler


def run(cfg: dict, command: str = "") -> dict:
    """Build everything from a resolved recipe and train; returns the loop's summary (+ export dir)."""
    r = cfg["run"]
    if r["threads"]:
        torch.set_num_threads(int(r["threads"]))
    seed = int(r["seed"])
    source = build_source(cfg["data"]["sources"], seed)
    tok = build_tokenizer_for(cfg, source)
    torch.manual_seed(seed)  # the model's initial weights
    model = build_model(cfg, tok)
    if cfg["model"]["init_std"]:
        reinit_linears(model, float(cfg["model"]["init_std"]))
    if cfg["init_from"]:
        init_from(model, cfg["init_from"])
    a = cfg["data"]["augment"]
    aug = Augment(int(a["crop_size"]), tuple(a["scale"]), tuple(a["ratio"]), a["interpolation"], float(a["hflip"]))
    if not cfg["native"]["enabled"] and aug.crop_size % model.cfg.encoder.patch_size:
        raise UserError(f"data.augment.crop_size {aug.crop_size} is not a multiple of the patch size "
                        f"{model.cfg.encoder.patch_size}")
    o = cfg["optim"]
    optim = OptimConfig(lr=peak_lr(cfg), min_lr=float(o["min_lr"]), weight_decay=float(o["weight_decay"]),
                        betas=tuple(o["betas"]), eps=float(o["eps"]), warmup_steps=int(o["warmup_steps"]),
                        steps=int(o["steps"]), grad_clip=float(o["grad_clip"]))
    n = cfg["native"]
    loop = PretrainConfig(
        out_dir=Path(r["out_dir"]).expanduser(), optim=optim,
        native=NativeConfig(bool(n["enabled"]), tuple(n["n_range"]), int(n["patches_per_batch"])),
        batch_size=int(cfg["batch"]["size"]), micro_batch=cfg["batch"]["micro_batch"],
        highres=bool(cfg["highres"]["enabled"]), seed=seed, log_every=int(r["log_every"]),
        ckpt_every=int(r["ckpt_every"]), stop_after=r["stop_after"], device=r["device"], dtype=r["dtype"],
        save_dtype=r["save_dtype"], progress=bool(r["progress"]),
    )
    meta = {"command": command, "recipe": cfg, "model": {"encoder": model.cfg.encoder.to_dict(),
            "decoder": model.cfg.decoder.to_dict(), "objective": model.cfg.objective, "alpha": model.cfg.alpha,
            "encoder_attention": model.cfg.encoder_attention, "init_std": cfg["model"]["init_std"]}, "data": cfg["data"], "text": tok.spec(),
            "optim": asdict(optim), "init_from": cfg["init_from"]}
    summary = pretrain(model, Sampler(source, tok, aug, seed, model.cfg.encoder.patch_size), loop, meta,
                       resume=bool(r["resume"]))
    if summary.get("model_dir"):
        summary["export_dir"] = str(finish_export(cfg, Path(summary["model_dir"]), tok, summary, model, command))
    return summary
