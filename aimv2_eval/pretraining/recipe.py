"""Pretraining recipes: the defaults every recipe starts from, YAML recipes, dotted overrides, and what a recipe
builds (tokenizer, model, peak learning rate).

Recipes: configs/pretrain/paper.yaml (Table A1) and configs/pretrain/tiny.yaml (the embedded tiny AIMv2, 2 CPU
cores). Overrides use dotted keys, values in YAML: `optim.steps=100 data.sources.0.n=500 run.out_dir=runs/x`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from aimv2_eval.config import deep_merge, unknown_key
from aimv2_eval.core.model import AIMv2, AIMv2Config
from aimv2_eval.core.pretrain import PEAK_LR
from aimv2_eval.core.variants import DEFAULT_DECODER, TINY_DECODER, encoder_config
from aimv2_eval.data.pairs import PairSource
from aimv2_eval.data.scenes import swap_left_right
from aimv2_eval.data.tokenizer import CompactVocab, Tokenizer, build_tokenizer
from aimv2_eval.errors import UserError

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


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict:
    """The recipe over the defaults, then `key=value` overrides (values parsed as YAML)."""
    file = resolve_config_path(str(path))
    try:
        recipe = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{file} is not valid YAML ({exc})") from None
    cfg = deep_merge(DEFAULTS, recipe, strict=True)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        top = key.split(".")[0]
        if top not in DEFAULTS:
            raise unknown_key(top, DEFAULTS)
        _set(cfg, key.strip(), yaml.safe_load(raw))
    return deep_merge(DEFAULTS, cfg, strict=True)  # re-check the keys overrides introduced


# ---------------------------------------------------------------- what a recipe builds
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
