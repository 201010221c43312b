"""open_clip text towers (`open_clip:<model>[:<tag>]`): the text half of a CLIP, with CLIP's BPE tokenizer.

The model is built by `open_clip.create_model` (random, or from the tag's weights file: cache, else download) and only
its text modules are kept (token_embedding, positional_embedding, transformer, ln_final, text_projection), under
open_clip's own names. Per-token features are taken after ln_final; the pooled vector is open_clip's: the text pool
(argmax = the end-of-text token for CLIP) followed by text_projection, so `width` is the projection's width.
"""

from __future__ import annotations

import difflib
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aimv2_eval.backbones.base import weights_checksum
from aimv2_eval.data.tokenizer import ClipTokenizer, Tokenizer
from aimv2_eval.errors import UserError
from aimv2_eval.text.base import Batch, TextEncoder, TextEncoderSpec, TextMeta, TextOutput, first_eot, register_resolver


class OpenCLIPText(TextEncoder):
    """The text tower of an open_clip `CLIP` (modules on the model) or `CustomTextCLIP` (a `TextTransformer` under
    `.text`, e.g. SigLIP)."""

    token_embedding: nn.Embedding
    positional_embedding: nn.Parameter
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: nn.Linear | nn.Parameter | None
    attn_mask: torch.Tensor | None

    def __init__(self, clip: nn.Module, tokenizer: Tokenizer, name: str, family: str = "open_clip",
                 weights_id: str = "random") -> None:
        super().__init__()
        tower: Any = getattr(clip, "text", clip)  # open_clip's modules, typed loosely
        if (not isinstance(getattr(tower, "token_embedding", None), nn.Embedding)
                or getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False)):
            raise UserError(f"{name}: only plain open_clip transformer text towers are supported "
                            f"(not {type(tower).__name__} with a class token, pad mask or a transformers model)")
        if not tower.transformer.batch_first:
            raise UserError(f"{name}: open_clip text tower is not batch-first; upgrade open-clip-torch")
        self.token_embedding = tower.token_embedding
        self.positional_embedding = tower.positional_embedding
        self.transformer = tower.transformer
        self.ln_final = tower.ln_final
        self.text_projection = tower.text_projection  # nn.Linear, a (width, dim) parameter, or None
        self.register_buffer("attn_mask", tower.attn_mask, persistent=False)  # causal for CLIP, None for SigLIP
        self.pool_type = getattr(tower, "pool_type", None) or clip.text_pool_type
        self.eos_id = getattr(tower, "eos_id", None) if tower is not clip else getattr(clip, "text_eos_id", None)
        self.tokenizer = tokenizer
        self.weights_id = weights_id
        token_width = int(tower.transformer.width)
        proj = self.text_projection
        width = proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1] if proj is not None else token_width
        self.meta = TextMeta(name, family, int(width), token_width, int(self.positional_embedding.shape[0]))

    def tokenize(self, texts: list[str]) -> Batch:
        return {"input_ids": self.tokenizer(texts)}

    def forward(self, batch: Batch) -> TextOutput:
        from open_clip.transformer import text_global_pool

        ids = batch["input_ids"]
        n = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:n]
        mask = self.attn_mask[:n, :n] if self.attn_mask is not None else None
        tokens = self.ln_final(self.transformer(x, attn_mask=mask))
        pooled = text_global_pool(tokens, ids, self.pool_type, eos_token_id=self.eos_id)
        proj = self.text_projection
        if isinstance(proj, nn.Linear):
            pooled = proj(pooled)
        elif proj is not None:
            pooled = pooled @ proj
        return TextOutput(tokens=tokens, mask=first_eot(ids, self.tokenizer.eot_id)[1], pooled=pooled)


def create_clip(name: str, model: str, tag: str | None, pretrained: bool) -> tuple[nn.Module, str]:
    """(open_clip model, weights id): random, or the tag's weights (cache, else download, else one clear error)."""
    import open_clip

    from aimv2_eval.backbones.open_clip import resolve_open_clip_weights

    tag_cfg = open_clip.get_pretrained_cfg(model, tag) if tag else {}
    quick_gelu = bool(tag_cfg.get("quick_gelu"))
    if not pretrained:
        return open_clip.create_model(model, pretrained=None, force_quick_gelu=quick_gelu,
                                      device=torch.get_default_device()), "random"
    if not tag:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise UserError(f"{name}: pretrained text weights need a tag ({', '.join(tags) or 'open_clip publishes none'}), "
                        f"e.g. open_clip:{model}:{tags[0] if tags else '<tag>'}; or build it random (pretrained=False)")
    path: Path = resolve_open_clip_weights(name, model, tag, None)
    try:
        clip = open_clip.create_model(model, pretrained=str(path), force_quick_gelu=quick_gelu)
    except Exception as exc:  # wrong architecture or corrupt file
        raise UserError(f"cannot load {path} into open_clip's {model} ({type(exc).__name__}: {exc})") from None
    return clip, weights_checksum(path)


def build_open_clip_text(name: str, model: str, tag: str | None, pretrained: bool = True,
                         corpus: list[str] | None = None) -> OpenCLIPText:
    import open_clip

    text_cfg = (open_clip.get_model_config(model) or {}).get("text_cfg", {})
    other = text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name")
    if other:
        raise UserError(f"{name}: {model}'s text tower uses the tokenizer {other}, not CLIP BPE; use "
                        "siglip:<sentencepiece model> for SigLIP, or hf:<id> for transformers towers")
    clip, weights_id = create_clip(name, model, tag, pretrained)
    tokenizer = ClipTokenizer(int(text_cfg.get("context_length", 77)))
    return OpenCLIPText(clip, tokenizer, name, weights_id=weights_id).eval()


@register_resolver
def resolve_open_clip_text(name: str) -> TextEncoderSpec | None:
    """`open_clip:<model>[:<tag>]` for a model open_clip knows."""
    if not name.startswith("open_clip:"):
        return None
    import open_clip

    model, _, tag = name.removeprefix("open_clip:").partition(":")
    known = open_clip.list_models()
    if model not in known:
        close = difflib.get_close_matches(model, known, n=3, cutoff=0.6)
        raise UserError(f"unknown open_clip model {model!r}; "
                        + (f"did you mean {', '.join(close)}?" if close else "see open_clip.list_models()"))
    if tag and not open_clip.get_pretrained_cfg(model, tag):
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise UserError(f"open_clip has no weights {tag!r} for {model}; known tags: {', '.join(tags) or 'none'}")
    return TextEncoderSpec(name=name, family="open_clip", build=partial(build_open_clip_text, name, model, tag or None),
                           source=f"open_clip {model}:{tag}" if tag else f"open_clip {model}")
