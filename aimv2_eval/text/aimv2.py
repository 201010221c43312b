"""The AIMv2-LiT text tower (`aimv2-lit`): random init, or read from a LiT checkpoint's state dict.

It follows Apple's release (ml-aim, aim-v2 `AIMv2TextEncoder`): token embedding plus a learned position embedding for
77 tokens, 12 causal pre-norm blocks of width 768 with 6 heads, SwiGLU 2048, RMSNorm, a final RMSNorm; the pooled
vector is the feature of the first end-of-text token. Module names follow Apple's checkpoint
(`preprocessor.text_embedding`, `preprocessor.positional_embedding`, `trunk.blocks.N.*`, `trunk.post_trunk_norm`), so
`text_encoder.*` of the official LiT checkpoint is this module's own state dict; transformers' `Aimv2Model` keys
(`text_model.*`) are converted by `text_keys_to_apple` / `text_keys_to_hf`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from aimv2_eval.backbones.base import load_state_strict, weights_checksum
from aimv2_eval.core.checkpoints import from_apple, read_weights, to_apple
from aimv2_eval.core.text_tower import TextPreprocessor, TextTrunk
from aimv2_eval.data.tokenizer import CONTEXT_LENGTH, ClipTokenizer, Tokenizer
from aimv2_eval.errors import UserError
from aimv2_eval.text.base import Batch, TextEncoder, TextEncoderSpec, TextMeta, TextOutput, first_eot, register

LIT_HUB_ID = "apple/aimv2-large-patch14-224-lit"
TEXT_HEADS_BY_WIDTH = {768: 6}  # the released LiT text tower (ml-aim aimv2_large_lit: text_num_heads=6)
StateDict = dict[str, torch.Tensor]
_EMB_HF_TO_APPLE = {"embeddings.token_embedding.weight": "preprocessor.text_embedding.weight",
                    "embeddings.position_embedding.weight": "preprocessor.positional_embedding"}


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

    def to_hf(self) -> dict[str, Any]:
        """transformers' `Aimv2TextConfig` fields (what `text_config_from_state` reads back)."""
        return {"hidden_size": self.width, "num_attention_heads": self.num_heads, "num_hidden_layers": self.depth,
                "intermediate_size": self.mlp_hidden, "vocab_size": self.vocab_size,
                "max_position_embeddings": self.context_length, "eos_token_id": self.eos_id,
                "rms_norm_eps": self.norm_eps}


class AIMv2TextEncoder(TextEncoder):
    """Causal transformer over caption tokens, pooled at the first end-of-text token."""

    def __init__(self, cfg: TextConfig, tokenizer: Tokenizer | None = None, name: str = "aimv2-lit",
                 weights_id: str = "random") -> None:
        super().__init__()
        self.cfg = cfg
        self.meta = TextMeta(name, "aimv2", cfg.width, cfg.width, cfg.context_length)
        self.weights_id = weights_id
        self.tokenizer = tokenizer
        self.preprocessor = TextPreprocessor(cfg.vocab_size, cfg.width, cfg.context_length)
        self.trunk = TextTrunk(cfg.width, cfg.num_heads, cfg.mlp_hidden, cfg.depth, cfg.norm_eps)
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

    def _run(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.preprocessor(ids)
        for block in self.trunk.blocks:
            x = block(x, is_causal=True)
        return self.trunk.post_trunk_norm(x)

    def forward(self, batch: Batch | torch.Tensor) -> TextOutput:
        ids = batch["input_ids"] if isinstance(batch, dict) else batch
        eot, mask = first_eot(ids, self.cfg.eos_id)
        x = self._run(ids)
        return TextOutput(tokens=x, mask=mask, pooled=x[torch.arange(x.shape[0], device=x.device), eot])

    def encode(self, batch: Batch | torch.Tensor) -> torch.Tensor:
        ids = batch["input_ids"] if isinstance(batch, dict) else batch
        eot, _ = first_eot(ids, self.cfg.eos_id)
        # Causal attention: tokens after the last pooled position cannot change it, so they are not computed.
        x = self._run(ids[:, : int(eot.max()) + 1])
        return x[torch.arange(x.shape[0], device=x.device), eot]


# ---------------------------------------------------------------- from a state dict
def text_keys_to_apple(sd: StateDict) -> StateDict:
    """transformers' `Aimv2Model` text keys (`text_model.` removed) -> this tower's own keys."""
    sd = dict(sd)
    sd.pop("embeddings.position_ids", None)
    out = {apple: sd.pop(hf) for hf, apple in _EMB_HF_TO_APPLE.items() if hf in sd}
    trunk, rest = to_apple(sd) if sd else ({}, {})
    if rest:
        raise UserError(f"unexpected text keys in an Aimv2Model checkpoint: {sorted(rest)[:3]}")
    out.update(trunk)
    return out


def text_keys_to_hf(sd: StateDict) -> StateDict:
    """This tower's own keys -> transformers' `Aimv2Model` text keys (without the `text_model.` prefix)."""
    sd = dict(sd)
    out = {hf: sd.pop(apple) for hf, apple in _EMB_HF_TO_APPLE.items() if apple in sd}
    out.update(from_apple(sd, "hf"))
    return out


def text_state_from_lit(sd: StateDict) -> StateDict:
    """The text tower's own state from a whole LiT state dict, Apple's (`text_encoder.*`) or transformers'
    (`text_model.*`) scheme."""
    apple = {k.removeprefix("text_encoder."): v for k, v in sd.items() if k.startswith("text_encoder.")}
    if apple:
        return apple
    hf = {k.removeprefix("text_model."): v for k, v in sd.items() if k.startswith("text_model.")}
    if not hf:
        raise UserError(f"no AIMv2 text tower in this checkpoint (first keys: {list(sd)[:3]}); expected "
                        "text_encoder.* (Apple) or text_model.* (transformers' Aimv2Model)")
    return text_keys_to_apple(hf)


def text_config_from_state(state: StateDict, config: dict | None = None) -> TextConfig:
    """The tower's architecture from its own state dict, heads and eos id from the checkpoint's config.json."""
    config = config or {}
    needed = ("preprocessor.text_embedding.weight", "preprocessor.positional_embedding", "trunk.blocks.0.mlp.fc1.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        raise UserError(f"not a complete AIMv2 text tower: missing {', '.join(missing)}; re-download the checkpoint")
    text_cfg = config.get("text_config") or {}
    emb = state["preprocessor.text_embedding.weight"]
    width = emb.shape[1]
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("trunk.blocks."))
    heads = text_cfg.get("num_attention_heads") or config.get("text_num_heads") or TEXT_HEADS_BY_WIDTH.get(width)
    if not heads:
        raise UserError(f"cannot tell the heads of a {width}-wide text tower: add text_config.num_attention_heads "
                        "to the checkpoint's config.json")
    eos = text_cfg.get("eos_token_id", config.get("eos_token_id", TextConfig.eos_id))
    return TextConfig(
        vocab_size=emb.shape[0],
        context_length=state["preprocessor.positional_embedding"].shape[0],
        width=width,
        depth=depth,
        num_heads=int(heads),
        mlp_hidden=state["trunk.blocks.0.mlp.fc1.weight"].shape[0],
        eos_id=int(eos[0] if isinstance(eos, list) else eos),
        norm_eps=float(text_cfg.get("rms_norm_eps") or 1e-5),
    )


def text_encoder_from_state(state: StateDict, config: dict | None = None, weights_id: str = "random",
                            source: str = "the checkpoint", name: str = "aimv2-lit") -> AIMv2TextEncoder:
    """An AIMv2-LiT text tower holding `state` (its own keys: `text_encoder.*` of a LiT checkpoint with the prefix
    removed) with the CLIP BPE tokenizer. `source` names the file in errors."""
    cfg = text_config_from_state(state, config)
    tokenizer = ClipTokenizer(cfg.context_length)
    if cfg.vocab_size < tokenizer.vocab_size:
        raise UserError(f"{source}: the text tower knows {cfg.vocab_size} token ids, not CLIP's {tokenizer.vocab_size} "
                        "(a compact vocabulary?); only CLIP-vocabulary towers can be loaded")
    encoder = AIMv2TextEncoder(cfg, tokenizer, name, weights_id)
    load_state_strict(encoder, state, "text encoder", source)
    return encoder.eval()


# ---------------------------------------------------------------- registered names
def build_lit_text(pretrained: bool = True, corpus: list[str] | None = None) -> AIMv2TextEncoder:
    """The released LiT text tower: weights from Apple's LiT checkpoint (cache, else download), or random."""
    if not pretrained:
        return AIMv2TextEncoder(TextConfig(), ClipTokenizer())
    raw, config, path = read_weights(LIT_HUB_ID, "LiT checkpoint")
    return text_encoder_from_state(text_state_from_lit(raw), config, weights_checksum(path), str(path))


register(TextEncoderSpec(name="aimv2-lit", family="aimv2", build=build_lit_text, source=LIT_HUB_ID,
                         aliases=("aimv2-lit-text",),
                         description="AIMv2-LiT text tower (CLIP BPE, 12 causal blocks of 768), first-EOT pooling"))
