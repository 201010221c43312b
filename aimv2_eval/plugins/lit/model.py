"""LiT (Zhai et al. 2022, paper Section 4.1 / Table 5): a locked image tower, a trainable text tower, a contrastive loss.

image -> frozen backbone patch tokens -> attention-pooling head -> linear projection  \
                                                                                       > cosine logits x temperature
caption -> text encoder's pooled vector -> linear projection                         /

The attention-pooling head is the one of Apple's AIMv2-LiT (ml-aim `AttentionPoolingClassifier` with one query, no
BatchNorm, no key/value bias, a linear output with bias); module names follow Apple's checkpoint so that
`image_encoder.head.*` loads as is. The loss is CLIP's softmax (symmetric cross-entropy) or SigLIP's sigmoid loss,
with a learnable temperature (and bias for sigmoid).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aimv2_eval.backbones import Backbone
from aimv2_eval.text import TextEncoder

LOSSES = ("softmax", "sigmoid")
MAX_LOGIT_SCALE = 100.0  # Apple's AIMv2LiT: max_logit_scale (the log scale is clamped to [0, log 100])
SOFTMAX_INIT_TEMPERATURE = 0.07  # Apple's AIMv2LiT / CLIP: init_temperature
SIGLIP_INIT = (math.log(10.0), -10.0)  # SigLIP (Zhai et al. 2023): t' = log 10, b = -10


def default_num_heads(dim: int) -> int:
    """Heads for the pooling head when the task does not say: the most heads with a width of at least 64 each."""
    for heads in (16, 12, 8, 6, 4, 3, 2):
        if dim % heads == 0 and dim // heads >= 64:
            return heads
    return 1


class AttentionPoolHead(nn.Module):
    """One learned query attends over the tokens (keys and values projected, no query projection), then a linear."""

    def __init__(self, dim: int, num_heads: int, out_dim: int | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"pooling head: width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.linear = nn.Linear(dim, out_dim or dim, bias=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # Computed in an associative order that never projects the N tokens (same function, same gradients):
        # q_h . (W_k x)_h = (W_k,h^T q_h) . x, and sum_n a_n (W_v x_n)_h = W_v,h (sum_n a_n x_n) since sum_n a_n = 1.
        b, n, d = tokens.shape
        h, dh = self.num_heads, d // self.num_heads
        q = self.cls_token.reshape(h, 1, dh)
        wk = self.k.weight.reshape(h, dh, d)
        qk = (q @ wk).squeeze(1)  # (h, d): each head's query moved into token space
        attn = torch.softmax((tokens @ qk.t()) * dh**-0.5, dim=1)  # (b, n, h)
        mixed = attn.transpose(1, 2) @ tokens  # (b, h, d): each head's attention-weighted token average
        wv = self.v.weight.reshape(h, dh, d)
        pooled = torch.einsum("bhd,hed->bhe", mixed, wv).reshape(b, d)
        return self.linear(pooled)


class LiT(nn.Module):
    """image tower (frozen) + head + projector; text tower + projector; temperature (and bias for sigmoid).

    `image_tower` may be None when the image side runs on cached tokens only (the tower is frozen, so its tokens
    can be computed once).
    """

    def __init__(self, image_tower: Backbone | None, image_dim: int, text_tower: TextEncoder, projection_dim: int,
                 head_heads: int | None = None, loss: str = "softmax") -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.loss_kind = loss
        self.image_tower = image_tower
        if image_tower is not None:
            image_tower.eval().requires_grad_(False)
        self.image_head = AttentionPoolHead(image_dim, head_heads or default_num_heads(image_dim))
        self.image_projector = nn.Linear(image_dim, projection_dim, bias=False)
        self.text_tower = text_tower
        self.text_projector = nn.Linear(text_tower.width, projection_dim, bias=False)
        if loss == "softmax":
            scale, bias = math.log(1.0 / SOFTMAX_INIT_TEMPERATURE), None
        else:
            scale, bias = SIGLIP_INIT
        self.log_logit_scale = nn.Parameter(torch.tensor(float(scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(bias))) if bias is not None else None
        self.max_log_logit_scale = math.log(MAX_LOGIT_SCALE)

    def train(self, mode: bool = True) -> LiT:
        super().train(mode)
        if self.image_tower is not None:
            self.image_tower.eval()  # locked: no dropout, no BatchNorm updates, whatever the mode
        return self

    # ------------------------------------------------------------ embeddings (not normalised)
    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        if self.image_tower is None:
            raise RuntimeError("this LiT has no image tower; pass cached tokens to embed_tokens")
        with torch.no_grad():
            return self.image_tower.tokens(images).tokens

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.image_projector(self.image_head(tokens.to(self.image_projector.weight.dtype)))

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(self.image_tokens(images))

    def text_features(self, batch: Any) -> torch.Tensor:
        """The text encoder's pooled vector before the projection (cacheable when the tower is frozen)."""
        return self.text_tower.encode(batch)

    def embed_text(self, batch: Any) -> torch.Tensor:
        return self.text_projector(self.text_features(batch))

    # ------------------------------------------------------------ similarity and loss
    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.clamp(0.0, self.max_log_logit_scale).exp()

    def logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """(n_images, n_texts) scaled cosine similarities (+ bias for sigmoid), as `logits_per_image`."""
        img = F.normalize(image_embeds, dim=-1)
        txt = F.normalize(text_embeds, dim=-1)
        out = self.logit_scale() * img @ txt.t()
        return out + self.logit_bias if self.logit_bias is not None else out

    def loss(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, pair_ids: torch.Tensor | None = None
             ) -> torch.Tensor:
        """Contrastive loss of a batch of matching pairs. `pair_ids` marks rows holding the same caption, which
        then count as positives of each other instead of as false negatives."""
        return contrastive_loss(self.logits(image_embeds, text_embeds), self.loss_kind, pair_ids)


def contrastive_loss(logits: torch.Tensor, kind: str, pair_ids: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP: mean of image->text and text->image cross-entropy. SigLIP: -sum log sigmoid(z * logit) / batch."""
    n = logits.shape[0]
    if pair_ids is None:
        positive = torch.eye(n, dtype=torch.bool, device=logits.device)
    else:
        positive = pair_ids[:, None] == pair_ids[None, :]
    if kind == "sigmoid":
        z = positive.to(logits.dtype) * 2 - 1
        return -F.logsigmoid(z * logits).sum() / n
    if pair_ids is None:
        target = torch.arange(n, device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    # several positives per row: cross-entropy against the uniform distribution over them
    target = positive.to(logits.dtype) / positive.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target.t()))
