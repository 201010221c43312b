"""SigLIP's text tower with its sentencepiece vocabulary (`siglip:<sentencepiece model file or folder>`).

The architecture is open_clip's ViT-B-16-SigLIP text tower (64 tokens, 12 bidirectional blocks of 768, the last
token pooled, a linear projection); pretrained=True loads open_clip's `webli` weights for it. The vocabulary is not
in any wheel, so it is named explicitly; the tokenizer is `aimv2_eval.data.tokenizer.SentencePieceTokenizer` (SigLIP's
convention: canonicalised text, EOS appended, padded with EOS).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from aimv2_eval.data.tokenizer import SentencePieceTokenizer
from aimv2_eval.errors import UserError
from aimv2_eval.text.base import TextEncoderSpec, register_resolver
from aimv2_eval.text.open_clip import OpenCLIPText, create_clip

SIGLIP_MODEL, SIGLIP_TAG = "ViT-B-16-SigLIP", "webli"


def build_siglip_text(name: str, vocabulary: str, pretrained: bool = True,
                      corpus: list[str] | None = None) -> OpenCLIPText:
    import open_clip

    path = Path(vocabulary).expanduser()
    if not path.exists():
        raise UserError(f"SigLIP vocabulary not found: {path}; pass siglip:<path of SigLIP's sentencepiece model "
                        "(spiece.model) or of the folder holding it>")
    text_cfg = open_clip.get_model_config(SIGLIP_MODEL)["text_cfg"]
    tokenizer = SentencePieceTokenizer(str(path), context_length=int(text_cfg["context_length"]))
    if tokenizer.vocab_size > int(text_cfg["vocab_size"]):
        raise UserError(f"{path} has {tokenizer.vocab_size} pieces but the SigLIP text tower embeds "
                        f"{text_cfg['vocab_size']}; pass SigLIP's own spiece.model")
    clip, weights_id = create_clip(name, SIGLIP_MODEL, SIGLIP_TAG, pretrained)
    return OpenCLIPText(clip, tokenizer, name, family="siglip", weights_id=weights_id).eval()


@register_resolver
def resolve_siglip_text(name: str) -> TextEncoderSpec | None:
    if not name.startswith("siglip:"):
        return None
    vocabulary = name.removeprefix("siglip:")
    if not vocabulary:
        raise UserError("siglip: needs the sentencepiece model of SigLIP's vocabulary, e.g. siglip:/path/spiece.model")
    return TextEncoderSpec(name=name, family="siglip", build=partial(build_siglip_text, name, vocabulary),
                           source=f"open_clip {SIGLIP_MODEL}:{SIGLIP_TAG} + {vocabulary}")
