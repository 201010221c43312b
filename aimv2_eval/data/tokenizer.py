"""Caption tokenizers for pretraining: open_clip's CLIP BPE (ships in the wheel, offline), a SigLIP-style
sentencepiece tokenizer when its model file is available, and a compact vocabulary for small closed corpora.

Every tokenizer returns (N, context_length) int64 ids with an end-of-text id after the caption; whatever follows the
first EOT is padding (`aimv2_eval.core.objective.text_mask` ignores it). Captions longer than the context are
truncated and still end in EOT.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch

from aimv2_eval.errors import UserError

CONTEXT_LENGTH = 77  # paper, Appendix A "Pre-training": captions truncated to 77 tokens (no Table A1 row)
SP_FILES = ("spiece.model", "tokenizer.model", "sentencepiece.model")
# SigLIP's English vocabulary (32,000 sentencepiece pieces) as its hub checkpoints ship it (spiece.model); AIMv2
# tokenizes captions with SigLIP's tokenizer (paper, Appendix A "Pre-training"). The base checkpoint: the vocabulary of
# the ViT-B-16-SigLIP text tower that aimv2_eval.text.siglip builds.
SIGLIP_VOCAB = "google/siglip-base-patch16-224"


class Tokenizer(Protocol):
    vocab_size: int
    eot_id: int
    pad_id: int
    context_length: int

    def __call__(self, texts: str | list[str]) -> torch.Tensor: ...

    def decode(self, ids: list[int]) -> str: ...

    def spec(self) -> dict: ...


def _pack(seqs: list[list[int]], context: int, eot: int, pad: int) -> torch.Tensor:
    out = torch.full((len(seqs), context), pad, dtype=torch.long)
    for i, ids in enumerate(seqs):
        if len(ids) > context:
            ids = ids[:context]
            ids[-1] = eot
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def _until_eot(ids: list[int], eot: int) -> list[int]:
    return ids[: ids.index(eot)] if eot in ids else list(ids)


class ClipTokenizer:
    """open_clip's CLIP BPE: [SOT] tokens [EOT] 0 0 ...; 49,408 ids."""

    def __init__(self, context_length: int = CONTEXT_LENGTH) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        self._tok = SimpleTokenizer(context_length=context_length)
        self.context_length = context_length
        self.vocab_size = len(self._tok.encoder)
        self.sot_id = self._tok.sot_token_id
        self.eot_id = self._tok.eot_token_id
        self.pad_id = 0

    def encode(self, text: str) -> list[int]:
        return [self.sot_id, *self._tok.encode(text), self.eot_id]

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return _pack([self.encode(t) for t in texts], self.context_length, self.eot_id, self.pad_id)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([i for i in _until_eot(ids, self.eot_id) if i != self.sot_id]).strip()

    def spec(self) -> dict:
        return {"kind": "clip", "context_length": self.context_length}


def _find_sp_model(source: str) -> Path:
    """A sentencepiece model file from a path, a folder holding one, or a hub repo (its cache first, then online)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in SP_FILES:
            if (path / name).is_file():
                return path / name
        raise UserError(f"no sentencepiece model in {path}: expected one of {', '.join(SP_FILES)}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError, RemoteEntryNotFoundError

    for name in SP_FILES:  # the cache answers at once, offline too
        try:
            return Path(hf_hub_download(source, name, local_files_only=True))
        except (EntryNotFoundError, HFValidationError):
            continue
    for name in SP_FILES:
        try:
            return Path(hf_hub_download(source, name))
        except RemoteEntryNotFoundError:  # the repo is there without this file name: try the next
            continue
        except (OSError, ValueError):  # offline, no such repo, not a repo id: one wait, not one per name
            break
    raise UserError(
        f"sentencepiece model {source!r} is not a file, a folder, or a hub repo in the local cache (offline?); "
        f"run `hf download {source} spiece.model` where the hub is reachable (the cache then answers), or pass the "
        "path of SigLIP's spiece.model (text.tokenizer.source=PATH in a pretraining recipe)"
    )


class SentencePieceTokenizer:
    """SigLIP's convention (open_clip `SigLipTokenizer`): canonicalised text, no BOS, EOS appended, padded with EOS.

    `kind` is what `spec()` records ("siglip" when built as SigLIP's tokenizer), so a saved tokenizer rebuilds as is.
    """

    def __init__(self, source: str, context_length: int = CONTEXT_LENGTH, kind: str = "sentencepiece") -> None:
        try:
            import sentencepiece as spm
        except ImportError:
            raise UserError("the sentencepiece tokenizer needs `pip install sentencepiece`; or use tokenizer=clip") from None
        self.source, self.kind = str(source), kind
        self.model_file = _find_sp_model(self.source)
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        except Exception as exc:
            raise UserError(f"cannot read sentencepiece model {self.model_file} ({exc}); re-download it") from None
        self.context_length = context_length
        self.vocab_size = self._sp.get_piece_size()
        self.eot_id = self._sp.eos_id()
        if self.eot_id < 0:
            raise UserError(f"{self.model_file} defines no end-of-sequence piece; AIMv2 captions need one")
        self.pad_id = self.eot_id

    def encode(self, text: str) -> list[int]:
        from open_clip.tokenizer import canonicalize_text

        return [*self._sp.encode(canonicalize_text(text)), self.eot_id]

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return _pack([self.encode(t) for t in texts], self.context_length, self.eot_id, self.pad_id)

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode(_until_eot(ids, self.eot_id))

    def spec(self) -> dict:
        return {"kind": self.kind, "source": self.source, "context_length": self.context_length}


class CompactVocab:
    """A base tokenizer restricted to the ids a corpus uses (plus one UNK), for small closed-vocabulary data.

    The CLIP vocabulary has 49,408 ids; the embedded scene and digit captions use about two hundred. Keeping only
    those shrinks the decoder's embedding and text head from ~19M to ~0.1M parameters for the tiny model.
    Ids keep the base order; pad and EOT map to their compact ids, unseen ids to UNK (the last id).
    """

    def __init__(self, base: Tokenizer, kept: list[int]) -> None:
        self.base = base
        specials = {base.pad_id, base.eot_id, getattr(base, "sot_id", base.eot_id)}
        self.kept = sorted(set(kept) | specials)
        self.unk_id = len(self.kept)
        self.vocab_size = len(self.kept) + 1
        self._table = torch.full((base.vocab_size,), self.unk_id, dtype=torch.long)
        self._table[torch.tensor(self.kept)] = torch.arange(len(self.kept))
        self.eot_id = int(self._table[base.eot_id])
        self.pad_id = int(self._table[base.pad_id])
        self.context_length = base.context_length

    @classmethod
    def from_texts(cls, base: Tokenizer, texts: list[str]) -> CompactVocab:
        ids = base(texts)
        return cls(base, torch.unique(ids).tolist())

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        return self._table[self.base(texts)]

    def decode(self, ids: list[int]) -> str:
        """Text of the ids up to the first EOT; UNK ids are dropped."""
        ids = _until_eot(ids, self.eot_id) + [self.eot_id]
        return self.base.decode([self.kept[i] for i in ids if i < len(self.kept)])

    def spec(self) -> dict:
        return {"kind": "compact", "base": self.base.spec(), "kept": self.kept}


def build_tokenizer(spec: dict | str) -> Tokenizer:
    """From a spec: "clip", {"kind": "clip", "context_length": 77}, {"kind": "sentencepiece", "source": PATH},
    "siglip" / {"kind": "siglip", "source": hub id, file or folder (default SIGLIP_VOCAB)},
    {"kind": "compact", "base": {...}, "kept": [...]}."""
    spec = {"kind": spec} if isinstance(spec, str) else dict(spec)
    kind = spec.get("kind", "clip")
    context = int(spec.get("context_length", CONTEXT_LENGTH))
    if kind == "clip":
        return ClipTokenizer(context)
    if kind == "siglip":
        return SentencePieceTokenizer(spec.get("source") or SIGLIP_VOCAB, context, kind="siglip")
    if kind == "sentencepiece":
        if not spec.get("source"):
            raise UserError("tokenizer kind sentencepiece needs source=<spiece.model file, directory or hub id>")
        return SentencePieceTokenizer(spec["source"], context)
    if kind == "compact":
        if "base" not in spec or "kept" not in spec:
            raise UserError("a compact tokenizer spec needs 'base' and 'kept'")
        return CompactVocab(build_tokenizer(spec["base"]), list(spec["kept"]))
    raise UserError(f"unknown tokenizer kind {kind!r}; choose clip, siglip, sentencepiece or compact")


def save_tokenizer(tok: Tokenizer, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(tok.spec()))
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"tokenizer file not found: {path}")
    return build_tokenizer(json.loads(path.read_text()))
