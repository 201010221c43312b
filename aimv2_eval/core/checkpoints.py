"""Load and save AIMv2 encoders in the three public key schemes.

- `apple`: Apple's original (`preprocessor.patchifier.proj`, `trunk.blocks.N.attn.qkv`, `trunk.post_trunk_norm`);
  this is also our module layout, so converting means renaming into it.
- `hf`: transformers' `Aimv2VisionModel` (`embeddings.*`, `encoder.layers.N.attention.{q,k,v,out}_proj`, ...),
  optionally under `vision_model.` as inside `Aimv2Model`.
- `timm`: timm's `aimv2_*` ViTs (`patch_embed.*`, `blocks.N.mlp.fc1_g`, `norm`).

Sources: a local directory laid out like the hub repos (config.json + model.safetensors), a single weights file, or
a hub id resolved through huggingface_hub (its cache honoured). safetensors preferred; `torch.load` only with
`weights_only=True`; remote code is never executed.

Every bad input ends in one `UserError` line naming the file and what to do: unreadable or non-object JSON, config
fields of the wrong type or contradicting the weights, damaged or empty weight files, pickles holding anything but
tensors, broken shard indexes, missing or misshapen tensors. Strictness: config.json fields this module does not
read are ignored (hub configs carry many); fields it reads must be well typed and agree with the weights; tensors
inside the encoder's key namespace must be exactly the architecture's, while tensors outside it (a pooling head, a
text tower, projections) are kept in `extra_state` without a warning, as the released LiT and transformers
checkpoints carry them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from aimv2_eval.core.encoder import AIMv2Encoder, EncoderConfig
from aimv2_eval.core.variants import HEADS_BY_WIDTH
from aimv2_eval.errors import UserError, first_line
from aimv2_eval.io import atomic_write, write_text_atomic
from aimv2_eval.validate import shown

SCHEMES = ("apple", "hf", "timm")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "model.pt", "model.pth")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
StateDict = dict[str, torch.Tensor]
REDOWNLOAD = "re-download the checkpoint"


# ---------------------------------------------------------------- one-line errors
_JSON_KINDS = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number",
               type(None): "null"}


def read_json_object(path: Path, fix: str = REDOWNLOAD) -> dict:
    """A JSON file that must hold an object (config.json, preprocessor_config.json, a shard index)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
        raise UserError(f"{path} is not valid JSON ({first_line(exc, named=True)}); {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds {_JSON_KINDS.get(type(data), type(data).__name__)}, not a JSON object; {fix}")
    return data


def config_section(config: dict, key: str, where: str | Path) -> dict:
    """`config[key]` (vision_config, text_config) as a dict, {} when absent or null."""
    section = config.get(key)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise UserError(f"{where}: {key} must be a JSON object, got {shown(section)}; {REDOWNLOAD}")
    return section


def is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


_INT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_heads",
               "patch_size", "image_size", "num_channels")
_FLOAT_FIELDS = ("rms_norm_eps", "norm_eps")


def check_config_fields(config: dict, where: str | Path) -> dict:
    """The encoder fields of a config.json that are read, each checked; null means absent. Returns `config`."""
    for key in _INT_FIELDS:
        value = config.get(key)
        if value is not None and not is_positive_int(value):
            raise UserError(f"{where}: {key} must be a positive integer, got {shown(value)}; fix or re-download it")
    for key in _FLOAT_FIELDS:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise UserError(f"{where}: {key} must be a positive number, got {shown(value)}; fix or re-download it")
    if config.get("is_native") is not None and not isinstance(config["is_native"], bool):
        raise UserError(f"{where}: is_native must be true or false, got {shown(config['is_native'])}; fix it")
    heads = config.get("num_attention_heads") or config.get("num_heads")
    width = config.get("hidden_size")
    if heads and width and width % heads:
        raise UserError(f"{where}: num_attention_heads {heads} does not divide hidden_size {width}; fix or "
                        "re-download it")
    return config


# ---------------------------------------------------------------- key schemes
def detect_scheme(sd: StateDict, source: str | Path | None = None) -> str:
    keys = list(sd)
    if not keys:
        raise UserError(f"{source or 'the checkpoint'} holds no tensors; {REDOWNLOAD}")
    if any(k.startswith(("preprocessor.", "trunk.", "image_encoder.preprocessor.")) for k in keys):
        return "apple"
    if any(k.startswith(("embeddings.", "encoder.layers.", "vision_model.embeddings.")) for k in keys):
        return "hf"
    if any(k.startswith(("patch_embed.", "blocks.")) for k in keys):
        return "timm"
    raise UserError(
        f"unrecognised checkpoint keys{f' in {source}' if source else ''} (first: "
        f"{keys[:3]}); expected an AIMv2 encoder in Apple's, transformers' or timm's key scheme"
    )


_TIMM_TO_APPLE = [
    (r"^patch_embed\.proj\.", "preprocessor.patchifier.proj."),
    (r"^patch_embed\.norm\.", "preprocessor.patchifier.norm."),
    (r"^pos_embed$", "preprocessor.pos_embed"),
    (r"^blocks\.(\d+)\.norm1\.", r"trunk.blocks.\1.norm_1."),
    (r"^blocks\.(\d+)\.norm2\.", r"trunk.blocks.\1.norm_2."),
    (r"^blocks\.(\d+)\.mlp\.fc1_g\.", r"trunk.blocks.\1.mlp.fc1."),
    (r"^blocks\.(\d+)\.mlp\.fc1_x\.", r"trunk.blocks.\1.mlp.fc3."),
    (r"^blocks\.(\d+)\.", r"trunk.blocks.\1."),
    (r"^norm\.", "trunk.post_trunk_norm."),
]
_HF_TO_APPLE = [
    (r"^embeddings\.patch_embed\.", "preprocessor.patchifier.proj."),
    (r"^embeddings\.rms_norm\.", "preprocessor.patchifier.norm."),
    (r"^encoder\.layers\.(\d+)\.rms_norm1\.", r"trunk.blocks.\1.norm_1."),
    (r"^encoder\.layers\.(\d+)\.rms_norm2\.", r"trunk.blocks.\1.norm_2."),
    (r"^encoder\.layers\.(\d+)\.attention\.out_proj\.", r"trunk.blocks.\1.attn.proj."),
    (r"^encoder\.layers\.(\d+)\.ffn\.gate_proj\.", r"trunk.blocks.\1.mlp.fc1."),
    (r"^encoder\.layers\.(\d+)\.ffn\.up_proj\.", r"trunk.blocks.\1.mlp.fc3."),
    (r"^encoder\.layers\.(\d+)\.ffn\.down_proj\.", r"trunk.blocks.\1.mlp.fc2."),
    (r"^rms_norm\.", "trunk.post_trunk_norm."),
]


def _rename(sd: StateDict, rules: list[tuple[str, str]]) -> StateDict:
    out = {}
    for key, value in sd.items():
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out


def _invert(rules: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Reverse simple rename rules (group references become regex groups)."""
    inv = []
    for pattern, repl in rules:
        src = "^" + re.escape(repl.replace(r"\1", "@")).replace("@", r"(\d+)")
        dst = pattern.lstrip("^").replace(r"(\d+)", r"\1").replace("\\.", ".").replace("$", "")
        inv.append((src, dst))
    return inv


def to_apple(sd: StateDict, source: str | Path | None = None) -> tuple[StateDict, StateDict]:
    """Convert any scheme to Apple's; returns (encoder weights, other weights such as a pooling head)."""
    scheme = detect_scheme(sd, source)
    if any(k.startswith("image_encoder.") for k in sd):  # Apple's LiT checkpoint: the image tower under a prefix
        sd = {k.removeprefix("image_encoder."): v for k, v in sd.items()}
    if scheme == "timm":
        sd = _rename(sd, _TIMM_TO_APPLE)
    elif scheme == "hf":
        sd = {k.removeprefix("vision_model."): v for k, v in sd.items()}
        sd.pop("embeddings.position_ids", None)
        qkv: dict[str, dict[str, torch.Tensor]] = {}
        rest = {}
        for k, v in sd.items():
            m = re.match(r"^encoder\.layers\.(\d+)\.attention\.([qkv])_proj\.weight$", k)
            if m:
                qkv.setdefault(m.group(1), {})[m.group(2)] = v
            else:
                rest[k] = v
        sd = _rename(rest, _HF_TO_APPLE)
        for i, parts in qkv.items():
            shapes = {tuple(p.shape[1:]) for p in parts.values()}
            if len(parts) != 3 or len(shapes) != 1:  # the fused qkv needs all three, of one width
                lacking = ", ".join(f"{n}_proj" for n in "qkv" if n not in parts)
                raise UserError(f"{source or 'the checkpoint'}: the attention of layer {i} "
                                + (f"lacks {lacking}.weight" if lacking else "has q/k/v projections of different widths")
                                + f"; {REDOWNLOAD}")
            sd[f"trunk.blocks.{i}.attn.qkv.weight"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        if "embeddings.position_embedding.weight" in sd:
            sd["preprocessor.pos_embed"] = sd.pop("embeddings.position_embedding.weight")[None]
    encoder = {k: v for k, v in sd.items() if k.startswith(("preprocessor.", "trunk."))}
    extra = {k: v for k, v in sd.items() if k not in encoder}
    return encoder, extra


def from_apple(sd: StateDict, scheme: str) -> StateDict:
    """Convert Apple-scheme encoder weights to `scheme`."""
    if scheme == "apple":
        return dict(sd)
    if scheme == "timm":
        return _rename(sd, _invert(_TIMM_TO_APPLE))
    if scheme == "hf":
        out = {}
        for k, v in sd.items():
            m = re.match(r"^trunk\.blocks\.(\d+)\.attn\.qkv\.weight$", k)
            if m:
                for name, part in zip("qkv", v.chunk(3, dim=0)):
                    out[f"encoder.layers.{m.group(1)}.attention.{name}_proj.weight"] = part
            elif k == "preprocessor.pos_embed":
                out["embeddings.position_embedding.weight"] = v[0]
            else:
                out[k] = v
        return _rename(out, _invert(_HF_TO_APPLE))
    raise UserError(f"unknown key scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")


# ---------------------------------------------------------------- configs
def infer_config(sd: StateDict, config: dict | None = None, source: str | Path | None = None) -> EncoderConfig:
    """Encoder config from Apple-scheme weights, with heads (and eps) from config.json when it has them.

    Checks on the way, each one line naming the file: the config's fields (types; heads dividing the width), the
    weights' structure (patch embedding, blocks, position table), and every architecture field config.json states
    (hidden_size, num_hidden_layers, intermediate_size, patch_size, num_channels, image_size) against the weights.
    `source`: the weights file, for messages (config.json is the one beside it).
    """
    where = str(source) if source else "the checkpoint"
    cfg_file = str(Path(source).parent / "config.json") if source else "config.json"
    config = check_config_fields(config or {}, cfg_file)
    proj = sd.get("preprocessor.patchifier.proj.weight")
    if proj is None:
        raise UserError(f"{where} holds no AIMv2 encoder weights (no preprocessor.patchifier.proj.weight)")
    if proj.ndim != 4 or proj.shape[2] != proj.shape[3]:
        raise UserError(f"{where}: the patch embedding has shape {tuple(proj.shape)}, not (width, channels, patch, "
                        f"patch); {REDOWNLOAD}")
    dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    blocks = [int(m.group(1)) for k in sd if (m := re.match(r"trunk\.blocks\.(\d+)\.", k))]
    fc1 = sd.get("trunk.blocks.0.mlp.fc1.weight")
    if not blocks or fc1 is None or fc1.ndim != 2:
        raise UserError(f"{where} lacks the first block's weights (trunk.blocks.0.mlp.fc1.weight); {REDOWNLOAD}")
    depth = 1 + max(blocks)
    heads = config.get("num_attention_heads") or config.get("num_heads") or HEADS_BY_WIDTH.get(dim)
    if not heads:
        raise UserError(
            f"cannot tell the number of attention heads of the {dim}-wide encoder in {where}: "
            + (f"{cfg_file} does not give num_attention_heads; add it" if source and Path(cfg_file).is_file() else
               "there is no config.json beside it; add one with num_attention_heads (the checkpoint's own)")
        )
    if dim % heads:
        raise UserError(f"{cfg_file}: num_attention_heads {heads} does not divide the encoder width {dim} of {where}; "
                        "fix or re-download it")
    pos = sd.get("preprocessor.pos_embed")
    native = pos is None or bool(config.get("is_native"))
    image_size = int(config.get("image_size") or 224)
    if pos is not None:
        tokens = pos.shape[1] if pos.ndim == 3 else 0
        grid = round(tokens ** 0.5)
        if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != dim or not tokens or grid * grid != tokens:
            raise UserError(f"{where}: the position table has shape {tuple(pos.shape)}, not (1, grid * grid, {dim}); "
                            f"{REDOWNLOAD}")
        image_size = grid * patch
    if native and dim % 4:
        raise UserError(f"{where}: a native-resolution (sin-cos) encoder needs a width divisible by 4, not {dim}")
    cfg = EncoderConfig(
        embed_dim=dim,
        depth=depth,
        num_heads=int(heads),
        mlp_hidden=fc1.shape[0],
        patch_size=patch,
        image_size=image_size,
        in_chans=in_chans,
        pos_embed="sincos" if native else "learned",
        norm_eps=float(config.get("rms_norm_eps") or config.get("norm_eps") or 1e-5),
    )
    held = {"hidden_size": cfg.embed_dim, "num_hidden_layers": cfg.depth, "intermediate_size": cfg.mlp_hidden,
            "patch_size": cfg.patch_size, "num_channels": cfg.in_chans}
    if pos is not None:  # else image_size is config.json's own
        held["image_size"] = cfg.image_size
    for key, value in held.items():
        if config.get(key) is not None and config[key] != value:
            raise UserError(f"{cfg_file} says {key} {config[key]} but {where} holds {value}: the config and the "
                            "weights come from different checkpoints; re-download them together")
    return cfg


# Keys that belong to the encoder in each source scheme: one left over after conversion is a tensor the
# architecture lacks (a qkv bias, say), not a head to keep aside.
_ENCODER_PREFIXES = {"apple": (), "hf": ("embeddings.", "encoder.", "rms_norm."),
                     "timm": ("patch_embed.", "blocks.", "norm.", "pos_embed")}


def check_encoder_state(cfg: EncoderConfig, state: StateDict, source: str | Path, extra: StateDict | None = None,
                        scheme: str = "apple") -> None:
    """Every tensor of the architecture present with its shape, and no other encoder tensor (strict; shapes
    compared on the meta device, so nothing is allocated and meta-device states can be checked too)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in AIMv2Encoder(cfg).state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    unexpected += [k for k in (extra or {}) if k.startswith(_ENCODER_PREFIXES.get(scheme, ()))]
    wrong = [f"{k} {tuple(state[k].shape)} instead of {expected[k]}" for k in expected
             if k in state and tuple(state[k].shape) != expected[k]]
    problems = [f"{label} {len(keys)} (first: {', '.join(keys[:2])})"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", wrong)) if keys]
    if problems:
        raise UserError(f"{source} does not match an AIMv2 encoder ({'; '.join(problems)}); re-download the "
                        "checkpoint, or fix config.json if it describes another model")


def config_json(cfg: EncoderConfig, scheme: str) -> dict:
    """A config.json readable by transformers-style tools and by `infer_config`."""
    return {
        "model_type": "aimv2_vision_model",
        "hidden_size": cfg.embed_dim,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.num_heads,
        "patch_size": cfg.patch_size,
        "image_size": cfg.image_size,
        "num_channels": cfg.in_chans,
        "rms_norm_eps": cfg.norm_eps,
        "is_native": cfg.pos_embed == "sincos",
        "qkv_bias": False,
        "use_head": False,
        "key_scheme": scheme,
    }


# ---------------------------------------------------------------- files
def read_state_dict(path: Path, device: str = "cpu") -> StateDict:
    """Read weights: safetensors, or a torch pickle through `weights_only=True`. Bad files raise UserError.

    device="meta": names and shapes only, no tensor data read (safetensors headers, torch's zip records), so a
    checkpoint can be checked before anything is loaded.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a weights file; pass a directory holding config.json + "
                        "model.safetensors, or a .safetensors / .pt / .bin file")
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    if path.name.endswith(".index.json"):  # sharded safetensors (the 1B / 3B hub repos)
        return read_sharded(path, device)
    if path.suffix == ".json":
        raise UserError(f"{path} is a JSON file, not weights; pass the directory holding it (config.json + "
                        "model.safetensors) or a weights file")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty (0 bytes), an interrupted download or copy; re-download the file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path, device)
    obj = torch_load_checked(path, "weights from", "re-download the file", map_location=device)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors; pass an AIMv2 checkpoint")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{path} is not a state dict of tensors ({shown(bad[0])} holds a "
                        f"{type(obj[bad[0]]).__name__}); pass an AIMv2 checkpoint")
    return obj


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def _read_safetensors(path: Path, device: str) -> StateDict:
    try:
        if device != "meta":
            return load_file(str(path))
        with safe_open(str(path), "pt") as f:  # the header only: the same validation, no tensor data
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta",
                                   dtype=_SAFETENSORS_DTYPES.get(f.get_slice(k).get_dtype(), torch.float32))
                    for k in f.keys()}
    except Exception as exc:  # a damaged header, a truncated file, random bytes
        raise UserError(f"cannot read weights from {path} ({first_line(exc, named=True)}); re-download the file") from None


def torch_load_checked(path: Path, what: str, fix: str, unsafe_fix: str = "convert it to safetensors",
                       map_location: str = "cpu") -> Any:
    """`torch.load(path, weights_only=True)` with every failure in one line: an empty or damaged file ("cannot read
    <what> <path> (...); <fix>"), or a pickle naming code to run ("refusing to unpickle <path>: ...;
    <unsafe_fix>"), instead of torch's paragraphs, which advise switching the safeguard off."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise UserError(f"cannot read {what} {path}: the file is empty (0 bytes); {fix}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's notes on pickle protocols; failures are ours
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only loader refused a global it names ("unsupported GLOBAL posix.system"), or a plain pickle
        # (protocol 2-5 header) it could not step through: either holds more than tensors. Anything else is damaged.
        named = re.search(r"GLOBAL (\S+)", str(exc))
        with open(path, "rb") as f:
            head = f.read(2)
        if named or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
            found = f" ({named.group(1)})" if named else ""
            raise UserError(f"refusing to unpickle {path}: it holds objects other than tensors{found}; "
                            f"{unsafe_fix}") from None
        raise UserError(f"cannot read {what} {path} (not a torch checkpoint, or a damaged one); {fix}") from None
    except Exception as exc:
        raise UserError(f"cannot read {what} {path} ({first_line(exc, named=True)}); {fix}") from None


def read_sharded(index: Path, device: str = "cpu") -> StateDict:
    """Merge the shards listed in a `*.index.json` weight map (every shard checked to exist first)."""
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{index} is not a safetensors index: it needs a non-empty \"weight_map\" object (tensor "
                        f"name -> shard file); {REDOWNLOAD}")
    for shard in weight_map.values():
        if not isinstance(shard, str) or not shard.strip() or shard.endswith(".index.json"):
            raise UserError(f"{index}: the weight map names {shown(shard)} as a shard; expected file names such as "
                            f"model-00001-of-00002.safetensors; {REDOWNLOAD}")
    shards = sorted(set(weight_map.values()))
    absent = [s for s in shards if not (index.parent / s).is_file()]
    if absent:
        raise UserError(f"{index} lists shard {absent[0]}, which is not in {index.parent} ({len(absent)} of "
                        f"{len(shards)} shards missing); {REDOWNLOAD}")
    merged: StateDict = {}
    for shard in shards:
        merged.update(read_state_dict(index.parent / shard, device))
    lost = [k for k in weight_map if k not in merged]
    if lost:
        raise UserError(f"{index} lists {lost[0]} in {weight_map[lost[0]]}, which does not hold it; {REDOWNLOAD}")
    return merged


def file_checksum(path: Path, limit: int | None = None) -> str:
    """sha256 of a weights file (the first `limit` bytes only, if given)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = limit
        while chunk := f.read(1 << 20 if remaining is None else min(1 << 20, remaining)):
            h.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
                if remaining <= 0:
                    break
    return h.hexdigest()


def hub_offline() -> bool:
    """True when Hugging Face downloads are switched off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def resolve_hub(repo_id: str, patterns: list[str] | None = None, download: bool = True) -> Path | None:
    """Local snapshot of a hub repo: the cache first, then the network; one clear error when neither works.

    Offline, a repo missing from the cache fails at once (no download attempt to time out). download=False: None
    instead of a download (a check before the build, which downloads)."""
    from huggingface_hub import snapshot_download

    patterns = patterns or ["config.json", "*.safetensors", "*.json"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    local = "or pass a local directory holding config.json + model.safetensors"
    if hub_offline():
        raise UserError(
            f"{repo_id!r} is not a local path and not in the Hugging Face cache, and this machine is offline "
            f"(HF_HUB_OFFLINE); run `hf download {repo_id}` where there is network, {local}"
        )
    if not download:
        return None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:
        from huggingface_hub.errors import RepositoryNotFoundError

        if isinstance(exc, RepositoryNotFoundError):  # gated repos too: a 401 looks the same
            raise UserError(f"{repo_id!r} is not a local path, and the Hugging Face hub has no such repo (or it is "
                            f"gated: run `hf auth login`); check the name, {local}") from None
        raise UserError(
            f"weights for {repo_id!r} are not in the Hugging Face cache and could not be downloaded "
            f"({first_line(exc, named=True)}); run `hf download {repo_id}` where there is network, {local}"
        ) from None


@dataclass
class LoadedCheckpoint:
    """What a checkpoint source resolved to."""

    encoder_state: StateDict
    extra_state: StateDict
    config: dict
    scheme: str
    weights_path: Path
    extras: dict = field(default_factory=dict)


def looks_like_hub_id(source: str) -> bool:
    """`org/name` that is not a path on disk: a Hugging Face hub id."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", source)) and not Path(source).exists()


def locate_weights(source: str | Path, what: str = "checkpoint", hub_hint: str = "a hub id",
                   download: bool = True) -> Path | None:
    """The weights file of a directory, a weights file or a hub id (cache first, then the network); None for a hub
    id neither cached nor downloaded when download=False."""
    src = str(source)
    if looks_like_hub_id(src):
        path = resolve_hub(src, download=download)
        if path is None:
            return None
    else:
        path = Path(src).expanduser()
    if not path.exists():
        raise UserError(
            f"{what} not found: {path}; pass a directory (config.json + model.safetensors), a file, or {hub_hint}"
        )
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
        if not found:
            if path.suffix in WEIGHT_SUFFIXES:  # a folder named like a weights file: the file was expected
                raise UserError(f"{path} is a directory, not a weights file; pass a weights file or a directory "
                                f"holding one of {', '.join(WEIGHT_FILES)}")
            raise UserError(f"no weights in {path}: expected one of {', '.join(WEIGHT_FILES)}")
        path = found[0]
    return path


def read_weights(source: str | Path, what: str = "checkpoint", hub_hint: str = "a hub id",
                 device: str = "cpu") -> tuple[StateDict, dict, Path]:
    """The raw state dict, the config.json beside it ({} when absent) and the weights file of a directory, a weights
    file or a hub id (cache first, then the network). Any key scheme; callers convert. config.json is read first
    (it must be a JSON object), so a broken one fails before any weights are read; device="meta": shapes only."""
    path = locate_weights(source, what, hub_hint)
    assert path is not None  # download=True: a path or a UserError
    config_file = path.parent / "config.json"
    config = read_json_object(config_file) if config_file.exists() else {}
    return read_state_dict(path, device), config, path


def read_checkpoint(source: str | Path, device: str = "cpu") -> LoadedCheckpoint:
    """Resolve a directory, file or hub id to Apple-scheme encoder weights plus config (device="meta": shapes
    only, nothing loaded)."""
    raw, config, weights = read_weights(source, device=device)
    scheme = detect_scheme(raw, weights)
    encoder_state, extra = to_apple(raw, weights)
    vision = config.get("vision_config", config)
    if vision is not None and not isinstance(vision, dict):
        raise UserError(f"{weights.parent / 'config.json'}: vision_config must be a JSON object, got "
                        f"{shown(vision)}; {REDOWNLOAD}")
    return LoadedCheckpoint(encoder_state, extra, vision or {}, scheme, weights)


def checked_config(ckpt: LoadedCheckpoint) -> EncoderConfig:
    """The encoder config of a checkpoint, after every check (config.json against the weights, each tensor's name
    and shape); works on meta-device checkpoints, so a build can be checked before it loads anything."""
    cfg = infer_config(ckpt.encoder_state, ckpt.config, ckpt.weights_path)
    check_encoder_state(cfg, ckpt.encoder_state, ckpt.weights_path, ckpt.extra_state, ckpt.scheme)
    return cfg


def load_encoder(source: str | Path) -> tuple[AIMv2Encoder, LoadedCheckpoint]:
    """Build an encoder from a checkpoint source in any scheme; strict: missing or unexpected keys fail."""
    ckpt = read_checkpoint(source)
    encoder = AIMv2Encoder(checked_config(ckpt))
    encoder.load_state_dict(ckpt.encoder_state)  # every key and shape matched already
    return encoder.eval(), ckpt


def save_encoder(
    encoder: AIMv2Encoder, directory: str | Path, scheme: str = "apple", extra: StateDict | None = None
) -> Path:
    """Write config.json + model.safetensors in `scheme`, each atomically (weights first: a config never points
    at half-written weights)."""
    out = Path(directory)
    sd = from_apple({k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}, scheme)
    sd.update({k: v.detach().cpu().contiguous() for k, v in (extra or {}).items()})
    meta = {"format": "pt", "key_scheme": scheme}
    atomic_write(out / "model.safetensors", lambda tmp: save_file(sd, str(tmp), metadata=meta))
    write_text_atomic(out / "config.json", json.dumps(config_json(encoder.cfg, scheme), indent=2))
    return out
