"""Load and save AIMv2 encoders in the three public key schemes.

- `apple`: Apple's original (`preprocessor.patchifier.proj`, `trunk.blocks.N.attn.qkv`, `trunk.post_trunk_norm`);
  this is also our module layout, so converting means renaming into it.
- `hf`: transformers' `Aimv2VisionModel` (`embeddings.*`, `encoder.layers.N.attention.{q,k,v,out}_proj`, ...),
  optionally under `vision_model.` as inside `Aimv2Model`.
- `timm`: timm's `aimv2_*` ViTs (`patch_embed.*`, `blocks.N.mlp.fc1_g`, `norm`).

Sources: a local directory laid out like the hub repos (config.json + model.safetensors), a single weights file, or
a hub id resolved through huggingface_hub (its cache honoured). safetensors preferred; `torch.load` only with
`weights_only=True`; remote code is never executed.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from aimv2_eval.core.encoder import AIMv2Encoder, EncoderConfig
from aimv2_eval.core.variants import HEADS_BY_WIDTH
from aimv2_eval.errors import UserError
from aimv2_eval.io import atomic_write, write_text_atomic

SCHEMES = ("apple", "hf", "timm")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "model.pt", "model.pth")
StateDict = dict[str, torch.Tensor]


# ---------------------------------------------------------------- key schemes
def detect_scheme(sd: StateDict) -> str:
    keys = list(sd)
    if any(k.startswith(("preprocessor.", "trunk.", "image_encoder.preprocessor.")) for k in keys):
        return "apple"
    if any(k.startswith(("embeddings.", "encoder.layers.", "vision_model.embeddings.")) for k in keys):
        return "hf"
    if any(k.startswith(("patch_embed.", "blocks.")) for k in keys):
        return "timm"
    raise UserError(
        "unrecognised checkpoint keys (first: "
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


def to_apple(sd: StateDict) -> tuple[StateDict, StateDict]:
    """Convert any scheme to Apple's; returns (encoder weights, other weights such as a pooling head)."""
    scheme = detect_scheme(sd)
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
def infer_config(sd: StateDict, config: dict | None = None) -> EncoderConfig:
    """Encoder config from Apple-scheme weights, with heads (and eps) from config.json when it has them."""
    config = config or {}
    proj = sd["preprocessor.patchifier.proj.weight"]
    dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("trunk.blocks."))
    heads = config.get("num_attention_heads") or config.get("num_heads") or HEADS_BY_WIDTH.get(dim)
    if not heads:
        raise UserError(
            f"cannot tell the number of attention heads of a {dim}-wide encoder: add num_attention_heads to config.json"
        )
    pos = sd.get("preprocessor.pos_embed")
    native = pos is None or bool(config.get("is_native"))
    image_size = int(config.get("image_size") or 224)
    if pos is not None:
        image_size = round(pos.shape[1] ** 0.5) * patch
    return EncoderConfig(
        embed_dim=dim,
        depth=depth,
        num_heads=int(heads),
        mlp_hidden=sd["trunk.blocks.0.mlp.fc1.weight"].shape[0],
        patch_size=patch,
        image_size=image_size,
        in_chans=in_chans,
        pos_embed="sincos" if native else "learned",
        norm_eps=float(config.get("rms_norm_eps") or config.get("norm_eps") or 1e-5),
    )


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
def read_state_dict(path: Path) -> StateDict:
    """Read weights: safetensors, or a torch pickle through `weights_only=True`. Bad files raise UserError."""
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    if path.name.endswith(".index.json"):  # sharded safetensors (the 1B / 3B hub repos)
        return read_sharded(path)
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated file, or a pickle that is not plain tensors
        raise UserError(
            f"cannot read weights from {path} ({type(exc).__name__}: {exc}); re-download the file"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return obj


def read_sharded(index: Path) -> StateDict:
    """Merge the shards listed in a `*.index.json` weight map."""
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError) as exc:
        raise UserError(f"{index} is not a safetensors index ({exc}); re-download the checkpoint") from None
    merged: StateDict = {}
    for shard in shards:
        merged.update(read_state_dict(index.parent / shard))
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


def resolve_hub(repo_id: str, patterns: list[str] | None = None) -> Path:
    """Local snapshot of a hub repo: the cache first, then the network; one clear error when neither works."""
    from huggingface_hub import snapshot_download

    patterns = patterns or ["config.json", "*.safetensors", "*.json"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:
        raise UserError(
            f"weights for {repo_id!r} are not in the Hugging Face cache and could not be downloaded "
            f"({type(exc).__name__}); run `hf download {repo_id}` where there is network, or pass a local "
            "directory holding config.json + model.safetensors"
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


def read_weights(source: str | Path, what: str = "checkpoint", hub_hint: str = "a hub id") -> tuple[StateDict, dict, Path]:
    """The raw state dict, the config.json beside it ({} when absent) and the weights file of a directory, a weights
    file or a hub id (cache first, then the network). Any key scheme; callers convert."""
    src = str(source)
    path = resolve_hub(src) if looks_like_hub_id(src) else Path(src).expanduser()
    if not path.exists():
        raise UserError(
            f"{what} not found: {path}; pass a directory (config.json + model.safetensors), a file, or {hub_hint}"
        )
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise UserError(f"no weights in {path}: expected one of {', '.join(WEIGHT_FILES)}")
        path = found[0]
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    return read_state_dict(path), config, path


def read_checkpoint(source: str | Path) -> LoadedCheckpoint:
    """Resolve a directory, file or hub id to Apple-scheme encoder weights plus config."""
    raw, config, weights = read_weights(source)
    scheme = detect_scheme(raw)
    encoder_state, extra = to_apple(raw)
    return LoadedCheckpoint(encoder_state, extra, config.get("vision_config", config), scheme, weights)


def load_encoder(source: str | Path) -> tuple[AIMv2Encoder, LoadedCheckpoint]:
    """Build an encoder from a checkpoint source in any scheme; strict: missing or unexpected keys fail."""
    ckpt = read_checkpoint(source)
    if "preprocessor.patchifier.proj.weight" not in ckpt.encoder_state:
        raise UserError(f"{ckpt.weights_path} holds no AIMv2 encoder weights")
    cfg = infer_config(ckpt.encoder_state, ckpt.config)
    encoder = AIMv2Encoder(cfg)
    missing, unexpected = encoder.load_state_dict(ckpt.encoder_state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"{ckpt.weights_path} does not match an AIMv2 encoder: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
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
