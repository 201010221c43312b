"""`aimv2-eval pretrain --config FILE [key=value ...]`: AIMv2 pretraining from a YAML recipe.

Recipes: configs/pretrain/paper.yaml (Table A1) and configs/pretrain/tiny.yaml (the embedded tiny AIMv2, 2 CPU
cores). Overrides use dotted keys, values in YAML: `optim.steps=100 data.sources.0.n=500 run.out_dir=runs/x`.
This module is the glue between the data pipeline (aimv2_eval.data) and the loop (aimv2_eval.core.pretrain).
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import math
import shlex
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from aimv2_eval.core.model import AIMv2, AIMv2Config
from aimv2_eval.core.pretrain import (
    PEAK_LR,
    NativeConfig,
    OptimConfig,
    PretrainConfig,
    init_from,
    native_grid,
    pretrain,
    reinit_linears,
    sample_index,
)
from aimv2_eval.core.variants import DEFAULT_DECODER, TINY_DECODER, encoder_config
from aimv2_eval.data.pairs import PairSource, build_source
from aimv2_eval.data.scenes import swap_left_right
from aimv2_eval.data.tokenizer import CompactVocab, Tokenizer, build_tokenizer, save_tokenizer
from aimv2_eval.errors import UserError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # AIMv2's released preprocessing (hub preprocessor_config)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "pretrain"

# Every key a recipe may set, with its default; a recipe or override naming another key is an error.
DEFAULTS: dict[str, Any] = {
    "model": {
        "size": "large",
        "image_size": None,  # None: the size's default (224 released, 112 tiny)
        "native_pos_embed": False,  # sin-cos positions, as the native-resolution AIMv2
        "objective": "aimv2",  # Table 9a: aimv2 | cap | aimv1
        "encoder_attention": "prefix",  # Table 9a: prefix | bidirectional
        "alpha": 0.4,  # Table 9c
        "init_std": None,  # None: the core's xavier-uniform linears (MAE/AIM); a number: truncated normal(std)
        "encoder": {},  # EncoderConfig overrides (depth, embed_dim, ...)
        "decoder": {},  # DecoderConfig overrides (width, depth, num_heads)
    },
    "text": {"tokenizer": "clip", "context_length": 77, "compact_vocab": 0},
    "data": {
        "sources": [{"kind": "scenes", "n": 10000, "seed": 0, "image_size": 224}],
        "augment": {"crop_size": 224, "scale": [0.4, 1.0], "ratio": [0.75, 1.33], "interpolation": "bicubic",
                    "hflip": 0.5},
    },
    "optim": {"lr": None, "min_lr": 1e-5, "weight_decay": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8,
              "warmup_steps": 12500, "steps": 1500000, "grad_clip": 1.0},
    "batch": {"size": 8192, "micro_batch": None},
    "native": {"enabled": False, "n_range": [7, 12], "patches_per_batch": 8192 * 256},
    "highres": {"enabled": False},
    "init_from": None,
    "run": {"seed": 0, "out_dir": "runs/pretrain", "export_dir": None, "log_every": 10, "ckpt_every": 1000,
            "stop_after": None, "device": "auto", "dtype": "float32", "save_dtype": "float32", "threads": None,
            "progress": True, "resume": True, "name": "aimv2", "readme_note": ""},
}


# ---------------------------------------------------------------- config
def _merge(base: dict, new: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in new.items():
        if key not in base:
            close = difflib.get_close_matches(key, list(base), n=1)
            hint = f"; did you mean {where}{close[0]}?" if close else f"; known: {', '.join(base)}"
            raise UserError(f"unknown config key {where}{key}{hint}")
        if isinstance(base[key], dict) and base[key] and isinstance(value, dict):
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set(cfg: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node: Any = cfg
    for i, key in enumerate(keys[:-1]):
        nxt = node[int(key)] if isinstance(node, list) and key.isdigit() and int(key) < len(node) else (
            node.get(key) if isinstance(node, dict) else None)
        if nxt is None:
            raise UserError(f"override {dotted}: no key {'.'.join(keys[: i + 1])} in the recipe")
        node = nxt
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise UserError(f"override {dotted}: index {last} out of range")
        node[int(last)] = value
    else:
        node[last] = value


def resolve_config_path(name: str) -> Path:
    path = Path(name).expanduser()
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
    raise UserError(f"pretraining config not found: {name}; pass a YAML file" + (f" or one of {known}" if known else ""))


def load_config(path: str | Path, overrides: list[str] = ()) -> dict:
    """The recipe over the defaults, then `key=value` overrides (values parsed as YAML)."""
    file = resolve_config_path(str(path))
    try:
        recipe = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{file} is not valid YAML ({exc})") from None
    cfg = _merge(DEFAULTS, recipe)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        top = key.split(".")[0]
        if top not in DEFAULTS:
            _merge(DEFAULTS, {top: None})  # raises with a did-you-mean
        _set(cfg, key.strip(), yaml.safe_load(raw))
    cfg = _merge(DEFAULTS, cfg)  # re-check the keys overrides introduced
    return cfg


# ---------------------------------------------------------------- model and tokenizer
def build_tokenizer_for(cfg: dict, source: PairSource) -> Tokenizer:
    text = cfg["text"]
    spec = text["tokenizer"]
    spec = {"kind": spec} if isinstance(spec, str) else dict(spec)
    spec.setdefault("context_length", int(text["context_length"]))
    tok = build_tokenizer(spec)
    n = int(text["compact_vocab"] or 0)
    if n > 0:  # the ids the first n captions use, and their mirrored wording (flip augmentation)
        caps = [source[i].caption for i in range(min(n, len(source)))]
        tok = CompactVocab.from_texts(tok, caps + [swap_left_right(c) for c in caps])
    return tok


def build_model(cfg: dict, tok: Tokenizer) -> AIMv2:
    m = cfg["model"]
    size = str(m["size"]).lower()
    try:
        enc = encoder_config(size, m["image_size"], bool(m["native_pos_embed"]))
    except KeyError as exc:
        raise UserError(str(exc).strip("'\"")) from None
    base_dec = TINY_DECODER if enc.embed_dim < 1024 else DEFAULT_DECODER
    try:
        enc = replace(enc, **m["encoder"])
        dec = replace(base_dec, vocab_size=tok.vocab_size, max_text_len=tok.context_length, **m["decoder"])
        mcfg = AIMv2Config(encoder=enc, decoder=dec, objective=m["objective"], alpha=float(m["alpha"]),
                           encoder_attention=m["encoder_attention"], eot_id=tok.eot_id)
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad model config: {exc}") from None
    return AIMv2(mcfg)


def peak_lr(cfg: dict) -> float:
    lr = cfg["optim"]["lr"]
    if lr is not None:
        return float(lr)
    size = str(cfg["model"]["size"]).lower()
    if size not in PEAK_LR:
        raise UserError(f"no Table A1 learning rate for size {size!r}; set optim.lr")
    return PEAK_LR[size]


# ---------------------------------------------------------------- samples
@dataclass(frozen=True)
class Augment:
    crop_size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    interpolation: str
    hflip: float


_INTERP = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def random_resized_crop_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
                            rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, driven by a numpy generator: (left, top, w, h)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height  # fallback: centre crop at the closest allowed ratio
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class Sampler:
    """`(position, area) -> (image, tokens)` for the loop; random choices seeded by (seed, position)."""

    def __init__(self, source: PairSource, tok: Tokenizer, aug: Augment, seed: int, patch_size: int) -> None:
        self.source, self.tok, self.aug, self.seed, self.patch = source, tok, aug, seed, patch_size
        self.mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
        self.std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
        if aug.interpolation not in _INTERP:
            raise UserError(f"unknown interpolation {aug.interpolation!r}; choose one of {', '.join(_INTERP)}")

    def image(self, position: int, area: int | None) -> tuple[Image.Image, str]:
        pair = self.source[sample_index(position, len(self.source), self.seed)]
        rng = np.random.default_rng([self.seed, position, 2])
        if pair.flippable and rng.random() < self.aug.hflip:
            pair = pair.flipped()
        img, interp = pair.image, _INTERP[self.aug.interpolation]
        if area is None:
            left, top, w, h = random_resized_crop_box(img.width, img.height, self.aug.scale, self.aug.ratio, rng)
            s = self.aug.crop_size
            img = img.resize((s, s), interp, box=(left, top, left + w, top + h))
        else:  # native resolution (Section 2.4): fit `area` patches, keep the aspect ratio, no crop
            gh, gw = native_grid(img.height, img.width, area)
            img = img.resize((gw * self.patch, gh * self.patch), interp)
        return img, pair.caption

    def __call__(self, position: int, area: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        img, caption = self.image(position, area)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - self.mean) / self.std, self.tok(caption)[0]


# ---------------------------------------------------------------- export
def _readme(cfg: dict, command: str, summary: dict, model: AIMv2, files: dict[str, int]) -> str:
    data = json.dumps(cfg["data"]["sources"])
    last = summary.get("last", {})
    enc = model.cfg.encoder
    lines = [
        f"# {cfg['run']['name']}: an AIMv2 pretrained by aimv2-eval",
        "",
        "Built by the project's pretraining core (`aimv2_eval/core/pretrain.py`) with one command:",
        "",
        "```",
        command,
        "```",
        "",
        f"- seed: {cfg['run']['seed']}; data: {data}",
        f"- recipe: {cfg['model']['size']} encoder ({enc.embed_dim}-d, {enc.depth} blocks, {enc.num_heads} heads, "
        f"patch {enc.patch_size}, {enc.image_size}px, {enc.pos_embed} positions), objective {model.cfg.objective}, "
        f"decoder {model.cfg.decoder.width}-d x {model.cfg.decoder.depth}, vocabulary {model.cfg.decoder.vocab_size}",
        f"- {summary['steps']} steps of batch {cfg['batch']['size']} ({summary['samples_seen']} samples), "
        f"peak lr {peak_lr(cfg)}, warmup {cfg['optim']['warmup_steps']}",
        f"- wall time: {summary['elapsed_s']:.0f} s on {torch.get_num_threads()} CPU thread(s), "
        f"{summary.get('cpu_s', 0):.0f} CPU-seconds (torch {torch.__version__})",
        f"- final losses (mean of the last {cfg['run']['log_every']} steps): loss {last.get('loss', float('nan')):.4f}, "
        f"loss_img {last.get('loss_img', float('nan')):.4f}, loss_text {last.get('loss_text', float('nan')):.4f}",
        "",
        "Files: " + ", ".join(f"`{k}` ({v / 1e6:.1f} MB)" for k, v in sorted(files.items())),
        "",
        "`config.json` + `model.safetensors` are the encoder in Apple's key scheme "
        "(`aimv2_eval.core.checkpoints.load_encoder`); `decoder.safetensors` + `decoder_config.json` the multimodal "
        "decoder; `tokenizer.json` the (compact) tokenizer spec; `pretrain.json` the resolved recipe.",
        "",
    ]
    if cfg["run"]["readme_note"]:
        lines += [cfg["run"]["readme_note"].strip(), ""]
    return "\n".join(lines)


def finish_export(cfg: dict, model_dir: Path, tok: Tokenizer, summary: dict, model: AIMv2, command: str) -> Path:
    save_tokenizer(tok, model_dir / "tokenizer.json")
    enc = model.cfg.encoder
    preproc = {"crop_size": {"height": enc.image_size, "width": enc.image_size}, "do_center_crop": True,
               "do_normalize": True, "do_resize": True, "image_mean": list(OPENAI_CLIP_MEAN),
               "image_std": list(OPENAI_CLIP_STD), "resample": 3, "size": {"shortest_edge": enc.image_size}}
    (model_dir / "preprocessor_config.json").write_text(json.dumps(preproc, indent=2))
    files = {p.name: p.stat().st_size for p in model_dir.iterdir() if p.is_file() and p.name != "README.md"}
    (model_dir / "README.md").write_text(_readme(cfg, command, summary, model, files))
    export = cfg["run"]["export_dir"]
    if not export:
        return model_dir
    dest = Path(export).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    for p in model_dir.iterdir():
        if p.is_file():
            shutil.copy2(p, dest / p.name)
    return dest


# ---------------------------------------------------------------- entry points
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="recipe YAML, or a name in configs/pretrain (paper, tiny)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.steps=100")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")


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


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(cfg, sort_keys=False))
        return 0
    command = " ".join(["aimv2-eval pretrain --config", shlex.quote(str(args.config)),
                        *(shlex.quote(o) for o in args.overrides)])
    summary = run(cfg, command)
    last = summary.get("last", {})
    where = summary.get("export_dir") or f"{cfg['run']['out_dir']} (checkpoint; rerun the same command to continue)"
    print(f"pretrain: {summary['steps']} steps in {summary['elapsed_s']} s, loss {last.get('loss', float('nan')):.4f} "
          f"-> {where}")
    return 0
