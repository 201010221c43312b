"""Pretraining recipes: the defaults every recipe starts from, YAML recipes, dotted overrides, and what a recipe
builds (tokenizer, model, peak learning rate).

Recipes: configs/pretrain/paper.yaml (Table A1), paper_highres_336.yaml / paper_highres_448.yaml (the
high-resolution stage that continues it) and configs/pretrain/tiny.yaml (the embedded tiny AIMv2, 2 CPU cores).
A recipe may start from another with `base: <recipe>` and set only what differs. Overrides use dotted keys, values
in YAML: `optim.steps=100 data.sources.0.n=500 run.out_dir=runs/x`.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import yaml

from aimv2_eval.config import deep_merge, unknown_key
from aimv2_eval.core.decoder import DecoderConfig
from aimv2_eval.core.encoder import EncoderConfig
from aimv2_eval.core.model import OBJECTIVES, AIMv2, AIMv2Config
from aimv2_eval.core.objective import REDUCTIONS
from aimv2_eval.core.pretrain import PEAK_LR
from aimv2_eval.core.variants import DEFAULT_DECODER, SIZES, TINY_DECODER, encoder_config
from aimv2_eval.data.pairs import CAPTIONED_KINDS, PairSource, caption_fields
from aimv2_eval.data.pairs import KINDS as SOURCE_KINDS
from aimv2_eval.data.scenes import swap_left_right
from aimv2_eval.data.tokenizer import CompactVocab, Tokenizer, build_tokenizer
from aimv2_eval.errors import UserError
from aimv2_eval.validate import as_float

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "pretrain"

# Every key a recipe may set, with its default; a recipe or override naming another key is an error.
DEFAULTS: dict[str, Any] = {
    "model": {
        "size": "large",
        "image_size": None,  # None: the size's default (224 released, 112 tiny)
        "native_pos_embed": False,  # sin-cos positions, as the native-resolution AIMv2
        "objective": "aimv2",  # Table 9a: aimv2 | cap | aimv1; Table 9b: clip | cappa
        # Section 2.1's 1/I, 1/T per sample, then the batch mean (sample); token: over the batch's kept tokens at once
        "loss_reduction": "sample",
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
    "init_from": None,  # a finished run's model folder: weights to start from, positions resampled to the new grid
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
        if not isinstance(nxt, dict | list):  # `optim.steps.x=3`: a value has no keys
            raise UserError(f"override {dotted}: {'.'.join(keys[: i + 1])} is a value, not a section")
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
    if path.is_dir():
        raise UserError(f"pretraining config {name} is a folder; pass a YAML file such as configs/pretrain/tiny.yaml")
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
    close = difflib.get_close_matches(Path(name).stem, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise UserError(f"pretraining config not found: {name}{hint}; pass a YAML file"
                    + (f" or one of {known}" if known else ""))


def _read_recipe(file: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A recipe file's mapping, over the recipe its `base:` names (a file beside it, or a bundled recipe)."""
    try:
        recipe = yaml.safe_load(file.read_text()) or {}
    except UnicodeDecodeError:
        raise UserError(f"{file} is not a text file; pass a YAML recipe such as configs/pretrain/tiny.yaml") from None
    except yaml.YAMLError as exc:  # its first line: the CLI's error is one line
        raise UserError(f"{file} is not valid YAML ({str(exc).splitlines()[0]}); fix the file") from None
    if not isinstance(recipe, dict):
        raise UserError(f"{file} must hold a mapping of sections (model, text, data, optim, ...), got "
                        f"{type(recipe).__name__}; see configs/pretrain/tiny.yaml")
    base = recipe.pop("base", None)
    if base is None:
        return recipe
    if not isinstance(base, str) or not base:
        raise UserError(f"{file}: base must name a recipe (such as paper), got {base!r}")
    beside = [c for c in (file.parent / base, file.parent / f"{base}.yaml") if c.is_file()]
    base_file = (beside[0] if beside else resolve_config_path(base)).resolve()
    if base_file in seen or base_file == file.resolve():
        raise UserError(f"{file}: base {base} leads back to itself; break the cycle")
    return deep_merge(_read_recipe(base_file, (*seen, file.resolve())), recipe)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict:
    """The recipe (over its `base:`) over the defaults, then `key=value` overrides (values parsed as YAML)."""
    file = resolve_config_path(str(path))
    cfg = deep_merge(DEFAULTS, _read_recipe(file), strict=True)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        top = key.split(".")[0]
        if top not in DEFAULTS:
            raise unknown_key(top, DEFAULTS)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise UserError(f"override {item!r}: the value is not YAML ({str(exc).splitlines()[0]}); quote it") from None
        key = key.strip()
        _set(cfg, key, value)
        folder = key in ("run.out_dir", "run.export_dir") or (key == "init_from" and not _hub_id_shaped(value))
        if folder and isinstance(value, str):
            _set(cfg, key, str(Path(value).expanduser().absolute()))  # given here: from the current folder
    cfg = deep_merge(DEFAULTS, cfg, strict=True)  # re-check the keys overrides introduced
    # After the overrides: the recipe's relative export_dir follows an out_dir given on the command line.
    _place_outputs(cfg["run"])
    _place_init(cfg)
    check_config(cfg)
    return cfg


def _place_outputs(run: dict) -> None:
    """Where a recipe file's relative folders go, whatever the current folder (folders given as overrides are
    already absolute): run.out_dir under $AIMV2_EVAL_HOME/pretrain, run.export_dir inside the final run.out_dir. Never into the installed package: replacing the
    bundled tiny model takes an explicit `run.export_dir=aimv2_eval/assets/aimv2-tiny` on the command line."""
    from aimv2_eval.config import home

    if isinstance(run.get("out_dir"), str) and not Path(run["out_dir"]).expanduser().is_absolute():
        run["out_dir"] = str(home() / "pretrain" / run["out_dir"])
    if isinstance(run.get("export_dir"), str) and not Path(run["export_dir"]).expanduser().is_absolute():
        run["export_dir"] = str(Path(run["out_dir"]) / run["export_dir"])


def _place_init(cfg: dict) -> None:
    """A recipe file's relative init_from is a run under $AIMV2_EVAL_HOME/pretrain, as its out_dir, so that
    paper_highres_336.yaml finds the model paper.yaml wrote whatever the current folder; `owner/name` stays a hub id
    (`apple/aimv2-large-patch14-224`), as the checkpoint reader takes it."""
    from aimv2_eval.config import home

    init = cfg.get("init_from")
    if isinstance(init, str) and init and not Path(init).expanduser().is_absolute() and not _hub_id_shaped(init):
        cfg["init_from"] = str(home() / "pretrain" / init)


def _hub_id_shaped(value: Any) -> bool:
    """`owner/name`, read as a hub id (a local folder of that shape needs ./ in front)."""
    return isinstance(value, str) and value.count("/") == 1 and not value.startswith((".", "~", "/"))


# ---------------------------------------------------------------- value checks
# A bad value fails here, in one line naming its key, before anything is built: not as a traceback from int() or
# torch halfway through a run (or after training, as a bad save_dtype did). Keys not listed are free-form or are
# checked where they are used (run.device, run.out_dir, init_from).
_NUMBERS: dict[str, tuple[str, float, bool]] = {  # key: (int | num, lowest value, None allowed)
    "model.image_size": ("int", 1, True), "model.alpha": ("num", 0, False), "model.init_std": ("num", 1e-12, True),
    "text.context_length": ("int", 1, False), "text.compact_vocab": ("int", 0, False),
    "data.augment.crop_size": ("int", 1, False), "data.augment.hflip": ("num", 0, False),
    "optim.lr": ("num", 1e-12, True), "optim.min_lr": ("num", 0, False), "optim.weight_decay": ("num", 0, False),
    "optim.eps": ("num", 1e-30, False), "optim.warmup_steps": ("int", 0, False), "optim.steps": ("int", 1, False),
    "optim.grad_clip": ("num", 0, False), "batch.size": ("int", 1, False), "batch.micro_batch": ("int", 1, True),
    "native.patches_per_batch": ("int", 1, False), "run.seed": ("int", 0, False), "run.log_every": ("int", 1, False),
    "run.ckpt_every": ("int", 1, False), "run.stop_after": ("int", 0, True), "run.threads": ("int", 1, True),
}
_FLAGS = ("model.native_pos_embed", "native.enabled", "highres.enabled", "run.progress", "run.resume")
_PAIRS = {"optim.betas": "num", "data.augment.scale": "num", "data.augment.ratio": "num", "native.n_range": "int"}
_CHOICES = {
    "model.size": SIZES, "model.objective": OBJECTIVES, "model.encoder_attention": ("prefix", "bidirectional"),
    "model.loss_reduction": REDUCTIONS,
    "data.augment.interpolation": ("bicubic", "bilinear", "nearest"),  # samples._INTERP
    "run.dtype": ("float32", "bfloat16"),
    "run.save_dtype": ("float32", "bfloat16", "float16"),
}
TOKENIZER_KINDS = ("clip", "sentencepiece", "siglip", "compact")  # aimv2_eval.data.tokenizer.build_tokenizer


def _get(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for key in dotted.split("."):
        node = node[key]
    return node


def _number(value: Any, kind: str) -> float | None:
    """The value as a number of `kind`, or None: numbers as `validate.as_float` reads them (YAML 1.1 reads `1e-3`
    as a string); integers must be YAML numbers with no fraction."""
    if kind == "num":
        return as_float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
        return None
    return value


def _bad(key: str, what: str, value: Any) -> UserError:
    return UserError(f"pretraining config: {key} must be {what}, got {value!r}; fix the recipe or override {key}=...")


def check_config(cfg: dict) -> None:
    """Types, ranges and names of a resolved recipe (raises UserError naming the first bad key)."""
    for key, (kind, low, optional) in _NUMBERS.items():
        value = _get(cfg, key)
        if value is None and optional:
            continue
        what = f"{'an integer' if kind == 'int' else 'a number'} {'> 0' if 0 < low < 1 else f'>= {low}'}"
        number = _number(value, kind)
        if number is None or number < low:
            raise _bad(key, what, value)
    if not 0 <= float(cfg["data"]["augment"]["hflip"]) <= 1:
        raise _bad("data.augment.hflip", "a probability in [0, 1]", cfg["data"]["augment"]["hflip"])
    for key in _FLAGS:
        if not isinstance(_get(cfg, key), bool):
            raise _bad(key, "true or false", _get(cfg, key))
    for key, kind in _PAIRS.items():
        value = _get(cfg, key)
        pair = [_number(v, kind) for v in value] if isinstance(value, list) else []
        ordered = key != "optim.betas"
        if len(pair) != 2 or None in pair or (ordered and pair[0] > pair[1]):
            what = f"a list of two {'integers' if kind == 'int' else 'numbers'}" + (", low then high" if ordered else "")
            raise _bad(key, what, value)
    if not all(0 <= _number(b, "num") < 1 for b in cfg["optim"]["betas"]):
        raise _bad("optim.betas", "two numbers in [0, 1)", cfg["optim"]["betas"])
    for key, choices in _CHOICES.items():
        value = _get(cfg, key)
        if (str(value).lower() if key == "model.size" else value) not in choices:  # build_model lowercases sizes
            raise _bad(key, f"one of {', '.join(choices)}", value)
    for key, config in (("encoder", EncoderConfig), ("decoder", DecoderConfig)):
        names = [f.name for f in fields(config)]
        for name in cfg["model"][key]:
            if name not in names:
                raise unknown_key(name, names, f"model.{key}.")
    tok = cfg["text"]["tokenizer"]
    kind = tok if isinstance(tok, str) else tok.get("kind", "clip") if isinstance(tok, dict) else None
    if kind not in TOKENIZER_KINDS:
        raise _bad("text.tokenizer", f"one of {', '.join(TOKENIZER_KINDS)} (or a mapping with such a kind)", tok)
    sources = cfg["data"]["sources"]
    for i, source in enumerate(sources if isinstance(sources, list) else [sources]):
        if not isinstance(source, dict):
            raise _bad(f"data.sources.{i}", "a mapping such as {kind: scenes, n: 1000}", source)
        if source.get("kind") not in SOURCE_KINDS:
            raise _bad(f"data.sources.{i}.kind", f"one of {', '.join(SOURCE_KINDS)}", source.get("kind"))
        weight = _number(source.get("weight", 1.0), "num")
        if weight is None or weight <= 0:
            raise _bad(f"data.sources.{i}.weight", "a number > 0", source.get("weight"))
        _check_caption(source, f"data.sources.{i}")
    if not sources:
        raise _bad("data.sources", "a non-empty list of sources", sources)
    init = cfg["init_from"]
    if init is not None and (not isinstance(init, str) or not init):
        raise _bad("init_from", "null or the model folder (or hub id) of a finished run", init)
    if cfg["highres"]["enabled"] and not init:  # Section 2.4: the 336/448px stage continues the 224px run
        raise _bad("init_from", "the 224px run's model folder when highres.enabled (the high-resolution stage "
                   "continues it)", init)


def _check_caption(source: dict, key: str) -> None:
    """`caption` is a field name or a list of them, and only where a source has caption fields to choose from."""
    if "caption" not in source:
        return
    if source["kind"] not in CAPTIONED_KINDS:
        raise _bad(f"{key}.caption", f"absent: a {source['kind']} source has one caption per image (only "
                   f"{', '.join(CAPTIONED_KINDS)} sources name theirs)", source["caption"])
    try:
        caption_fields(source["caption"])
    except UserError:
        raise _bad(f"{key}.caption", "a caption field (txt, synthetic.txt, a column name) or a list of them",
                   source["caption"]) from None


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
                           encoder_attention=m["encoder_attention"], eot_id=tok.eot_id,
                           loss_reduction=m.get("loss_reduction", "token"))  # older recipes (pretrain.json) used token
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
