"""Load (and save) LiT checkpoints: Apple's AIMv2-LiT release in its own key scheme and in transformers' `Aimv2Model`.

Apple's scheme (ml-aim, aim-v2 `AIMv2LiT`; the hub repo apple/aimv2-large-patch14-224-lit):
  image_encoder.preprocessor.* / image_encoder.trunk.*   the AIMv2 image encoder (our core layout)
  image_encoder.head.{k,v,cls_token,linear}              the attention-pooling head
  image_projector.weight, text_projector.weight
  text_encoder.preprocessor.{text_embedding.weight, positional_embedding}, text_encoder.trunk.*
  log_logit_scale
transformers' scheme (`Aimv2Model`): vision_model.{embeddings,encoder,rms_norm}.*, vision_model.head.{k_proj, v_proj,
cls_token, output_proj}, visual_projection, text_model.{embeddings.token_embedding, embeddings.position_embedding,
encoder, rms_norm}, text_projection, logit_scale. The image encoder's keys are converted by the AIMv2 backbone family
(`aimv2_keys_to_apple` / `aimv2_keys_from_apple`), the text tower's by the text registry (`text_keys_to_apple` /
`text_keys_to_hf`); only the head and the projections are renamed here. The towers themselves are built by their
registries (`backbone_from_state`, `text_encoder_from_state`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from aimv2_eval.backbones import (
    Backbone,
    aimv2_heads,
    aimv2_keys_from_apple,
    aimv2_keys_to_apple,
    backbone_from_state,
    load_state_strict,
    read_weights,
    weights_checksum,
)
from aimv2_eval.core.checkpoints import check_config_fields, config_section
from aimv2_eval.errors import UserError
from aimv2_eval.io import atomic_write, write_text_atomic
from aimv2_eval.plugins.lit.model import LiT
from aimv2_eval.text import AIMv2TextEncoder, text_encoder_from_state, text_keys_to_apple, text_keys_to_hf

LIT_HUB_ID = "apple/aimv2-large-patch14-224-lit"
SCHEMES = ("apple", "hf")
StateDict = dict[str, torch.Tensor]

_HEAD_HF_TO_APPLE = {"k_proj": "k", "v_proj": "v", "output_proj": "linear", "cls_token": "cls_token"}
_TOP_HF_TO_APPLE = {"visual_projection.weight": "image_projector.weight",
                    "text_projection.weight": "text_projector.weight", "logit_scale": "log_logit_scale"}


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
    vision_enc, vision_rest = aimv2_keys_to_apple(_prefixed(sd, "vision_model."))
    out.update({f"image_encoder.{k}": v for k, v in vision_enc.items()})
    for k, v in vision_rest.items():
        m = re.fullmatch(r"head\.(\w+)(\.weight|\.bias)?", k)
        if not m or m.group(1) not in _HEAD_HF_TO_APPLE:
            raise UserError(f"unexpected key vision_model.{k} in an Aimv2Model checkpoint")
        out[f"image_encoder.head.{_HEAD_HF_TO_APPLE[m.group(1)]}{m.group(2) or ''}"] = v
    out.update({f"text_encoder.{k}": v for k, v in text_keys_to_apple(_prefixed(sd, "text_model.")).items()})
    for hf_key, apple_key in _TOP_HF_TO_APPLE.items():
        if hf_key in sd:
            out[apple_key] = sd[hf_key]
    return out


def apple_to_hf(sd: StateDict) -> StateDict:
    """Apple's AIMv2-LiT scheme -> transformers' Aimv2Model state dict."""
    out: StateDict = {}
    out.update({f"vision_model.{k}": v for k, v in aimv2_keys_from_apple(_prefixed(sd, "image_encoder."), "hf").items()
                if not k.startswith("head.")})
    head_names = {v: k for k, v in _HEAD_HF_TO_APPLE.items()}
    for k, v in _prefixed(sd, "image_encoder.head.").items():
        name, _, suffix = k.partition(".")
        out[f"vision_model.head.{head_names[name]}{'.' + suffix if suffix else ''}"] = v
    out.update({f"text_model.{k}": v for k, v in text_keys_to_hf(_prefixed(sd, "text_encoder.")).items()})
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


def read_lit(source: str | Path) -> LiTCheckpoint:
    """A LiT checkpoint from a directory (config.json + weights), a weights file or a hub id, in Apple's scheme."""
    raw, config, path = read_weights(source, "LiT checkpoint", f"a hub id such as {LIT_HUB_ID}")
    for key in ("vision_config", "text_config"):  # each tower reads its section as an object
        config_section(config, key, path.parent / "config.json")
    scheme = detect_lit_scheme(raw)
    state = hf_to_apple(raw) if scheme == "hf" else dict(raw)
    return LiTCheckpoint(state, config, scheme, path)


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
    config_file = ckpt.weights_path.parent / "config.json"
    vision_cfg = check_config_fields(config_section(ckpt.config, "vision_config", config_file), config_file)
    for key, ndim in (("image_encoder.head.cls_token", 3), ("image_projector.weight", 2), ("text_projector.weight", 2)):
        if state[key].ndim != ndim:
            raise UserError(f"{ckpt.weights_path}: {key} has shape {tuple(state[key].shape)}, not {ndim}-D; "
                            "re-download the checkpoint")
    if state["log_logit_scale"].numel() != 1:
        raise UserError(f"{ckpt.weights_path}: log_logit_scale holds {state['log_logit_scale'].numel()} values, not "
                        "one; re-download the checkpoint")
    encoder_state = {k[len("image_encoder."):]: v for k, v in state.items()
                     if k.startswith(("image_encoder.preprocessor.", "image_encoder.trunk."))}
    head_state = _prefixed(state, "image_encoder.head.")
    dim = head_state["cls_token"].shape[-1]
    heads = vision_cfg.get("num_attention_heads") or ckpt.config.get("vision_num_heads") or aimv2_heads(dim)
    if not heads:
        raise UserError(f"cannot tell the heads of the {dim}-wide pooling head: add vision_config.num_attention_heads "
                        "to the checkpoint's config.json")
    weights_id = weights_checksum(ckpt.weights_path)  # names both towers in records
    if backbone is None:
        if not encoder_state:
            raise UserError(f"{ckpt.weights_path} holds no image encoder; pass the backbone it was tuned on")
        backbone = backbone_from_state("lit-image-tower", encoder_state, vision_cfg, ckpt.weights_path, weights_id)
    elif backbone.meta.embed_dim != dim:
        raise UserError(f"the LiT checkpoint's head reads {dim}-wide tokens but backbone {backbone.meta.name} emits "
                        f"{backbone.meta.embed_dim}; use the backbone the checkpoint was tuned on")
    elif strict_tower and encoder_state and _tower_matches(backbone, encoder_state) is False:
        raise UserError(f"backbone {backbone.meta.name} is not the image tower of {ckpt.weights_path} (weights "
                        f"differ); use --backbone aimv2-large-patch14-224-lit or the tower it was tuned on")
    text = text_encoder_from_state(_prefixed(state, "text_encoder."), ckpt.config, weights_id, str(ckpt.weights_path),
                                   name="lit-text-tower")
    proj = state["image_projector.weight"].shape[0]
    model = LiT(backbone, dim, text, proj, head_heads=int(heads), loss="softmax")
    load_state_strict(model.image_head, head_state, "attention-pool head", ckpt.weights_path)
    load_state_strict(model.image_projector, {"weight": state["image_projector.weight"]}, "image projector", ckpt.weights_path)
    load_state_strict(model.text_projector, {"weight": state["text_projector.weight"]}, "text projector", ckpt.weights_path)
    with torch.no_grad():
        model.log_logit_scale.copy_(state["log_logit_scale"].reshape(()))
    return model.eval()


def load_lit(source: str | Path, backbone: Backbone | None = None) -> tuple[LiT, LiTCheckpoint]:
    ckpt = read_lit(source)
    return build_lit(ckpt, backbone), ckpt


# ---------------------------------------------------------------- writing
def _aimv2_text(model: LiT) -> AIMv2TextEncoder:
    if not isinstance(model.text_tower, AIMv2TextEncoder):
        raise UserError("only LiT models with the AIMv2 text tower have an Apple/transformers checkpoint layout")
    return model.text_tower


def lit_state(model: LiT, encoder_state: StateDict | None = None) -> StateDict:
    """Apple-scheme state of an AIMv2-text LiT (the image encoder's weights only when given, Apple-scheme)."""
    text = _aimv2_text(model)
    sd: StateDict = {f"image_encoder.{k}": v for k, v in (encoder_state or {}).items()}
    sd.update({f"image_encoder.head.{k}": v for k, v in model.image_head.state_dict().items()})
    sd.update({f"text_encoder.{k}": v for k, v in text.state_dict().items()})
    sd["image_projector.weight"] = model.image_projector.weight
    sd["text_projector.weight"] = model.text_projector.weight
    sd["log_logit_scale"] = model.log_logit_scale
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def save_lit(model: LiT, directory: str | Path, scheme: str = "apple", encoder_state: StateDict | None = None) -> Path:
    """config.json + model.safetensors, each written atomically (weights first: a config never names half a file)."""
    if scheme not in SCHEMES:
        raise UserError(f"unknown LiT key scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    out = Path(directory)
    sd = lit_state(model, encoder_state)
    if scheme == "hf":
        sd = apple_to_hf(sd)
    config = {
        "model_type": "aimv2",
        "key_scheme": scheme,
        "projection_dim": model.image_projector.out_features,
        "vision_config": {"hidden_size": model.image_projector.in_features,
                          "num_attention_heads": model.image_head.num_heads},
        "text_config": _aimv2_text(model).cfg.to_hf(),
    }
    meta = {"format": "pt", "key_scheme": scheme}
    atomic_write(out / "model.safetensors", lambda tmp: save_file(sd, str(tmp), metadata=meta))
    write_text_atomic(out / "config.json", json.dumps(config, indent=2))
    return out
