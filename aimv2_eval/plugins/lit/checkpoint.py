"""Load (and save) LiT checkpoints: Apple's AIMv2-LiT release in its own key scheme and in transformers' `Aimv2Model`.

Apple's scheme (ml-aim, aim-v2 `AIMv2LiT`; the hub repo apple/aimv2-large-patch14-224-lit):
  image_encoder.preprocessor.* / image_encoder.trunk.*   the AIMv2 image encoder (our core layout)
  image_encoder.head.{k,v,cls_token,linear}              the attention-pooling head
  image_projector.weight, text_projector.weight
  text_encoder.preprocessor.{text_embedding.weight, positional_embedding}, text_encoder.trunk.*
  log_logit_scale
transformers' scheme (`Aimv2Model`): vision_model.{embeddings,encoder,rms_norm}.*, vision_model.head.{k_proj, v_proj,
cls_token, output_proj}, visual_projection, text_model.{embeddings.token_embedding, embeddings.position_embedding,
encoder, rms_norm}, text_projection, logit_scale. Encoder parts are converted by `core.checkpoints.to_apple` /
`from_apple`; only the head, the text embeddings and the projections are renamed here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from aimv2_eval.backbones.aimv2 import AIMv2Backbone, aimv2_preprocess
from aimv2_eval.backbones.base import Backbone, weights_checksum
from aimv2_eval.core.checkpoints import (
    WEIGHT_FILES,
    from_apple,
    infer_config,
    read_state_dict,
    resolve_hub,
    to_apple,
)
from aimv2_eval.core.encoder import AIMv2Encoder
from aimv2_eval.core.variants import HEADS_BY_WIDTH
from aimv2_eval.data.tokenizer import ClipTokenizer
from aimv2_eval.errors import UserError
from aimv2_eval.plugins.lit.model import LiT
from aimv2_eval.plugins.lit.text import AIMv2TextEncoder, TextConfig

LIT_HUB_ID = "apple/aimv2-large-patch14-224-lit"
SCHEMES = ("apple", "hf")
StateDict = dict[str, torch.Tensor]
TEXT_HEADS_BY_WIDTH = {768: 6}  # the released LiT text tower (ml-aim aimv2_large_lit: text_num_heads=6)

_HEAD_HF_TO_APPLE = {"k_proj": "k", "v_proj": "v", "output_proj": "linear", "cls_token": "cls_token"}
_TOP_HF_TO_APPLE = {"visual_projection.weight": "image_projector.weight",
                    "text_projection.weight": "text_projector.weight", "logit_scale": "log_logit_scale"}
_TEXT_EMB_HF_TO_APPLE = {"embeddings.token_embedding.weight": "preprocessor.text_embedding.weight",
                         "embeddings.position_embedding.weight": "preprocessor.positional_embedding"}


def detect_lit_scheme(sd: StateDict) -> str:
    keys = list(sd)
    if any(k.startswith(("image_encoder.", "text_encoder.")) for k in keys):
        return "apple"
    if any(k.startswith(("vision_model.", "text_model.")) for k in keys):
        return "hf"
    raise UserError(
        f"not a LiT checkpoint (first keys: {keys[:3]}); expected Apple's AIMv2-LiT keys (image_encoder.*, "
        "text_encoder.*) or transformers' Aimv2Model keys (vision_model.*, text_model.*)"
    )


def _prefixed(sd: StateDict, prefix: str) -> StateDict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def hf_to_apple(sd: StateDict) -> StateDict:
    """transformers' Aimv2Model state dict -> Apple's AIMv2-LiT scheme."""
    out: StateDict = {}
    vision_enc, vision_rest = to_apple(_prefixed(sd, "vision_model."))
    out.update({f"image_encoder.{k}": v for k, v in vision_enc.items()})
    for k, v in vision_rest.items():
        m = re.fullmatch(r"head\.(\w+)(\.weight|\.bias)?", k)
        if not m or m.group(1) not in _HEAD_HF_TO_APPLE:
            raise UserError(f"unexpected key vision_model.{k} in an Aimv2Model checkpoint")
        out[f"image_encoder.head.{_HEAD_HF_TO_APPLE[m.group(1)]}{m.group(2) or ''}"] = v
    text = _prefixed(sd, "text_model.")
    text.pop("embeddings.position_ids", None)
    for hf_key, apple_key in _TEXT_EMB_HF_TO_APPLE.items():
        if hf_key in text:
            out[f"text_encoder.{apple_key}"] = text.pop(hf_key)
    text_enc, text_rest = to_apple(text) if text else ({}, {})
    if text_rest:
        raise UserError(f"unexpected text keys in an Aimv2Model checkpoint: {sorted(text_rest)[:3]}")
    out.update({f"text_encoder.{k}": v for k, v in text_enc.items()})
    for hf_key, apple_key in _TOP_HF_TO_APPLE.items():
        if hf_key in sd:
            out[apple_key] = sd[hf_key]
    return out


def apple_to_hf(sd: StateDict) -> StateDict:
    """Apple's AIMv2-LiT scheme -> transformers' Aimv2Model state dict."""
    out: StateDict = {}
    out.update({f"vision_model.{k}": v for k, v in from_apple(_prefixed(sd, "image_encoder."), "hf").items()
                if not k.startswith("head.")})
    head_names = {v: k for k, v in _HEAD_HF_TO_APPLE.items()}
    for k, v in _prefixed(sd, "image_encoder.head.").items():
        name, _, suffix = k.partition(".")
        out[f"vision_model.head.{head_names[name]}{'.' + suffix if suffix else ''}"] = v
    text = _prefixed(sd, "text_encoder.")
    for hf_key, apple_key in _TEXT_EMB_HF_TO_APPLE.items():
        if apple_key in text:
            out[f"text_model.{hf_key}"] = text.pop(apple_key)
    out.update({f"text_model.{k}": v for k, v in from_apple(text, "hf").items()})
    for hf_key, apple_key in _TOP_HF_TO_APPLE.items():
        if apple_key in sd:
            out[hf_key] = sd[apple_key]
    return out


# ---------------------------------------------------------------- reading
@dataclass
class LiTCheckpoint:
    state: StateDict  # Apple scheme
    config: dict
    scheme: str
    weights_path: Path


def _looks_like_hub_id(source: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", source)) and not Path(source).exists()


def read_lit(source: str | Path) -> LiTCheckpoint:
    """A LiT checkpoint from a directory (config.json + weights), a weights file or a hub id, in Apple's scheme."""
    src = str(source)
    path = resolve_hub(src) if _looks_like_hub_id(src) else Path(src).expanduser()
    if not path.exists():
        raise UserError(f"LiT checkpoint not found: {path}; pass a directory (config.json + model.safetensors), a "
                        f"weights file, or a hub id such as {LIT_HUB_ID}")
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        found = [path / n for n in WEIGHT_FILES if (path / n).is_file()]
        if not found:
            raise UserError(f"no weights in {path}: expected one of {', '.join(WEIGHT_FILES)}")
        path = found[0]
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    raw = read_state_dict(path)
    scheme = detect_lit_scheme(raw)
    state = hf_to_apple(raw) if scheme == "hf" else dict(raw)
    return LiTCheckpoint(state, config, scheme, path)


def _text_config(state: StateDict, config: dict) -> TextConfig:
    text_cfg = config.get("text_config") or {}
    emb = state["text_encoder.preprocessor.text_embedding.weight"]
    width = emb.shape[1]
    depth = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("text_encoder.trunk.blocks."))
    heads = text_cfg.get("num_attention_heads") or config.get("text_num_heads") or TEXT_HEADS_BY_WIDTH.get(width)
    if not heads:
        raise UserError(f"cannot tell the heads of a {width}-wide text tower: add text_config.num_attention_heads "
                        "to the checkpoint's config.json")
    eos = text_cfg.get("eos_token_id", config.get("eos_token_id", TextConfig.eos_id))
    return TextConfig(
        vocab_size=emb.shape[0],
        context_length=state["text_encoder.preprocessor.positional_embedding"].shape[0],
        width=width,
        depth=depth,
        num_heads=int(heads),
        mlp_hidden=state["text_encoder.trunk.blocks.0.mlp.fc1.weight"].shape[0],
        eos_id=int(eos[0] if isinstance(eos, list) else eos),
        norm_eps=float(text_cfg.get("rms_norm_eps") or 1e-5),
    )


def _tower_matches(backbone: Backbone, encoder_state: StateDict) -> bool | None:
    """Whether the backbone holds the checkpoint's image-encoder weights: True / False, or None when its parameter
    names do not line up with the checkpoint's (another family), so nothing can be compared."""
    own = backbone.state_dict()
    pairs = []
    for key, value in encoder_state.items():
        hits = [k for k in own if k == key or k.endswith("." + key)]
        if len(hits) != 1:
            return None
        pairs.append((own[hits[0]], value))
    return all(a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-6) for a, b in pairs)


def _load(module: torch.nn.Module, state: StateDict, what: str, path: Path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:  # missing / unexpected keys or wrong shapes: a damaged or foreign file
        first = str(exc).strip().splitlines()
        raise UserError(f"{path}: the {what} does not match its architecture ({first[1].strip() if len(first) > 1 else first[0]}); "
                        "re-download the checkpoint") from None


def build_lit(ckpt: LiTCheckpoint, backbone: Backbone | None = None, strict_tower: bool = True) -> LiT:
    """A LiT model with the checkpoint's head, text tower, projections and temperature.

    The image tower is `backbone` when given (it must be the tower the checkpoint was tuned on, when that can be
    checked), else the checkpoint's own AIMv2 image encoder.
    """
    state = ckpt.state
    missing = [k for k in ("image_projector.weight", "text_projector.weight", "log_logit_scale",
                           "image_encoder.head.cls_token", "text_encoder.preprocessor.text_embedding.weight")
               if k not in state]
    if missing:
        raise UserError(f"{ckpt.weights_path} is not a complete LiT checkpoint: missing {', '.join(missing)}")
    vision_cfg = ckpt.config.get("vision_config") or {}
    encoder_state = {k[len("image_encoder."):]: v for k, v in state.items()
                     if k.startswith(("image_encoder.preprocessor.", "image_encoder.trunk."))}
    head_state = _prefixed(state, "image_encoder.head.")
    dim = head_state["cls_token"].shape[-1]
    heads = vision_cfg.get("num_attention_heads") or ckpt.config.get("vision_num_heads") or HEADS_BY_WIDTH.get(dim)
    if not heads:
        raise UserError(f"cannot tell the heads of the {dim}-wide pooling head: add vision_config.num_attention_heads "
                        "to the checkpoint's config.json")
    if backbone is None:
        if not encoder_state:
            raise UserError(f"{ckpt.weights_path} holds no image encoder; pass the backbone it was tuned on")
        enc_cfg = infer_config(encoder_state, vision_cfg)
        encoder = AIMv2Encoder(enc_cfg)
        _load(encoder, encoder_state, "image encoder", ckpt.weights_path)
        backbone = AIMv2Backbone(encoder.eval(), "lit-image-tower", aimv2_preprocess(enc_cfg, ckpt.weights_path.parent),
                                 weights_checksum(ckpt.weights_path))
    elif backbone.meta.embed_dim != dim:
        raise UserError(f"the LiT checkpoint's head reads {dim}-wide tokens but backbone {backbone.meta.name} emits "
                        f"{backbone.meta.embed_dim}; use the backbone the checkpoint was tuned on")
    elif strict_tower and encoder_state and _tower_matches(backbone, encoder_state) is False:
        raise UserError(f"backbone {backbone.meta.name} is not the image tower of {ckpt.weights_path} (weights "
                        f"differ); use --backbone aimv2-large-patch14-224-lit or the tower it was tuned on")
    text_cfg = _text_config(state, ckpt.config)
    text = AIMv2TextEncoder(text_cfg, ClipTokenizer(text_cfg.context_length))
    _load(text, _prefixed(state, "text_encoder."), "text encoder", ckpt.weights_path)
    proj = state["image_projector.weight"].shape[0]
    model = LiT(backbone, dim, text, proj, head_heads=int(heads), loss="softmax")
    _load(model.image_head, head_state, "attention-pool head", ckpt.weights_path)
    _load(model.image_projector, {"weight": state["image_projector.weight"]}, "image projector", ckpt.weights_path)
    _load(model.text_projector, {"weight": state["text_projector.weight"]}, "text projector", ckpt.weights_path)
    with torch.no_grad():
        model.log_logit_scale.copy_(state["log_logit_scale"].reshape(()))
    return model.eval()


def load_lit(source: str | Path, backbone: Backbone | None = None) -> tuple[LiT, LiTCheckpoint]:
    ckpt = read_lit(source)
    return build_lit(ckpt, backbone), ckpt


# ---------------------------------------------------------------- writing
def lit_state(model: LiT, encoder_state: StateDict | None = None) -> StateDict:
    """Apple-scheme state of an AIMv2-text LiT (the image encoder's weights only when given, Apple-scheme)."""
    if not isinstance(model.text_tower, AIMv2TextEncoder):
        raise UserError("only LiT models with the AIMv2 text tower have an Apple/transformers checkpoint layout")
    sd: StateDict = {f"image_encoder.{k}": v for k, v in (encoder_state or {}).items()}
    sd.update({f"image_encoder.head.{k}": v for k, v in model.image_head.state_dict().items()})
    sd.update({f"text_encoder.{k}": v for k, v in model.text_tower.state_dict().items()})
    sd["image_projector.weight"] = model.image_projector.weight
    sd["text_projector.weight"] = model.text_projector.weight
    sd["log_logit_scale"] = model.log_logit_scale
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def save_lit(model: LiT, directory: str | Path, scheme: str = "apple", encoder_state: StateDict | None = None) -> Path:
    """config.json + model.safetensors, written under temporary names first, then renamed."""
    if scheme not in SCHEMES:
        raise UserError(f"unknown LiT key scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    sd = lit_state(model, encoder_state)
    if scheme == "hf":
        sd = apple_to_hf(sd)
    tcfg = model.text_tower.cfg
    config = {
        "model_type": "aimv2",
        "key_scheme": scheme,
        "projection_dim": model.image_projector.out_features,
        "vision_config": {"hidden_size": model.image_projector.in_features,
                          "num_attention_heads": model.image_head.num_heads},
        "text_config": {"hidden_size": tcfg.width, "num_attention_heads": tcfg.num_heads,
                        "num_hidden_layers": tcfg.depth, "intermediate_size": tcfg.mlp_hidden,
                        "vocab_size": tcfg.vocab_size, "max_position_embeddings": tcfg.context_length,
                        "eos_token_id": tcfg.eos_id, "rms_norm_eps": tcfg.norm_eps},
    }
    tmp_w, tmp_c = out / ".model.safetensors.tmp", out / ".config.json.tmp"
    save_file(sd, str(tmp_w), metadata={"format": "pt", "key_scheme": scheme})
    tmp_c.write_text(json.dumps(config, indent=2))
    tmp_w.replace(out / "model.safetensors")
    tmp_c.replace(out / "config.json")
    return out
