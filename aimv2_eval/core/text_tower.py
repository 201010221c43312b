"""The CLIP side of the Table 9b comparison: a causal text tower and a contrastive head on the AIMv2 encoder.

The paper says only that CLIP, CapPa and AIMv2 were "trained using identical architectures, incorporating SwiGLU and
RMSNorm" (Section 5, Table 9b). Ours follows Apple's released AIMv2-LiT (ml-aim `AIMv2LiT`, transformers
`Aimv2Model`) for everything CLIP adds:
- text tower: token embedding + learned positions, causal pre-norm blocks (the core's SwiGLU/RMSNorm `Block`), final
  RMSNorm, pooled at the first end-of-text token; module names as Apple's text tower (`preprocessor.text_embedding`,
  `preprocessor.positional_embedding`, `trunk.blocks.N`, `trunk.post_trunk_norm`): text/aimv2.py's
  `AIMv2TextEncoder` loads its state dict as is (prefix `text_tower.` in clip_head.safetensors);
- its size is the decoder's (width, depth, heads, SwiGLU width rule, vocabulary, context): CLIP's text tower takes
  the place of AIMv2's decoder, and `model.decoder.*` sizes either (ours: the paper gives no text tower size);
- image pooling: one learned query attending over the patch tokens (keys and values projected, no query
  projection, no bias), then a linear with bias (ml-aim `AttentionPoolingClassifier` as AIMv2-LiT configures it,
  heads = the encoder's); the same head as plugins/lit (core cannot import plugins);
- projections without bias to the text width (AIMv2-LiT: projection_dim 768 = its text width); learnable
  temperature, log scale initialised to log(1/0.07) and clamped to [0, log 100] (CLIP; AIMv2-LiT).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from aimv2_eval.core.decoder import DecoderConfig
from aimv2_eval.core.encoder import EncoderConfig
from aimv2_eval.core.layers import Block, RMSNorm, swiglu_hidden_dim
from aimv2_eval.core.objective import clip_loss, text_mask
from aimv2_eval.errors import UserError

INIT_TEMPERATURE = 0.07  # CLIP (Radford et al. 2021); ml-aim AIMv2LiT init_temperature
MAX_LOGIT_SCALE = 100.0  # CLIP; ml-aim AIMv2LiT max_logit_scale


class TextPreprocessor(nn.Module):
    """Token + learned position embeddings; module names as Apple's text tower (also used by text/aimv2.py)."""

    def __init__(self, vocab_size: int, width: int, context_length: int) -> None:
        super().__init__()
        self.text_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context_length, width))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        if n > self.positional_embedding.shape[0]:
            raise UserError(f"captions of {n} tokens exceed the text tower's context of {self.positional_embedding.shape[0]}")
        return self.text_embedding(ids) + self.positional_embedding[:n]


class TextTrunk(nn.Module):
    """The text tower's blocks and final norm (also used by text/aimv2.py)."""

    def __init__(self, width: int, num_heads: int, mlp_hidden: int, depth: int, norm_eps: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, num_heads, mlp_hidden, norm_eps) for _ in range(depth))
        self.post_trunk_norm = RMSNorm(width, norm_eps)


class TextTower(nn.Module):
    """Causal transformer over caption tokens; returns the feature of each caption's first end-of-text token."""

    def __init__(self, cfg: DecoderConfig, eot_id: int) -> None:
        super().__init__()
        self.eot_id = eot_id
        self.preprocessor = TextPreprocessor(cfg.vocab_size, cfg.width, cfg.max_text_len)
        self.trunk = TextTrunk(cfg.width, cfg.num_heads, swiglu_hidden_dim(cfg.width), cfg.depth, cfg.norm_eps)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """As the released text tower (text/aimv2.py): xavier-uniform linears, embeddings N(0, 0.02), positions
        N(0, 0.01)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
        nn.init.normal_(self.preprocessor.text_embedding.weight, std=0.02)
        nn.init.normal_(self.preprocessor.positional_embedding, std=0.01)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.preprocessor(ids)
        for block in self.trunk.blocks:
            x = block(x, is_causal=True)
        x = self.trunk.post_trunk_norm(x)
        eot = text_mask(ids, self.eot_id).sum(dim=1) - 1  # the first end-of-text (the last token if none)
        return x[torch.arange(len(x), device=x.device), eot]


class AttentionPool(nn.Module):
    """One learned query attends over the tokens (keys and values projected, no query projection), then a linear."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.linear = nn.Linear(dim, dim, bias=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, d = tokens.shape
        h = self.num_heads
        q = self.cls_token.to(tokens.dtype).expand(b, -1, -1).reshape(b, 1, h, d // h).transpose(1, 2)
        k = self.k(tokens).reshape(b, n, h, d // h).transpose(1, 2)
        v = self.v(tokens).reshape(b, n, h, d // h).transpose(1, 2)
        pooled = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, d)
        return self.linear(pooled)


class ContrastiveHead(nn.Module):
    """Image pooling + projection, text tower + projection, temperature: CLIP's loss from encoder tokens."""

    def __init__(self, enc: EncoderConfig, dec: DecoderConfig, eot_id: int) -> None:
        super().__init__()
        self.image_pool = AttentionPool(enc.embed_dim, enc.num_heads)
        self.image_projector = nn.Linear(enc.embed_dim, dec.width, bias=False)
        self.text_tower = TextTower(dec, eot_id)
        self.text_projector = nn.Linear(dec.width, dec.width, bias=False)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1 / INIT_TEMPERATURE)))

    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.clamp(0.0, math.log(MAX_LOGIT_SCALE)).exp()

    def embed_images(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.image_projector(self.image_pool(tokens))

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_projector(self.text_tower(ids))

    def forward(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        return clip_loss(self.embed_images(image_tokens), self.embed_text(text_tokens), self.logit_scale())
