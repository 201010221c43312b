"""The Grounding DINO detector head in plain torch, configured as MM-Grounding-DINO (mmdetection 3.3 `GroundingDINO`,
configs/mm_grounding_dino/): everything after the image backbone and the text encoder.

Pipeline (the mmdet modules each part stands for in brackets):
- ChannelMapper: a 1x1 conv + GroupNorm per input level to `hidden`; a Linear maps text tokens to `hidden`
  (`text_feat_map`).
- Feature enhancer (`GroundingDinoTransformerEncoder`), per layer: bi-directional image<->text attention fusion
  (`SingleScaleBiAttentionBlock`, layer-scale gammas 1e-4), text self-attention under the sub-sentence mask with sine
  positions of `position_ids`, multi-scale deformable self-attention over all image levels; post-norm FFNs.
- Language-guided query selection (`GroundingDINO.pre_decoder`): encoder proposals per pixel, scored by the
  contrastive head; the top `num_queries` by their best token become the decoder's (detached) reference boxes;
  content queries are a learned embedding (DINO's mixed query selection).
- Cross-modality decoder (`GroundingDinoTransformerDecoder`), per layer: query self-attention (with the denoising
  mask), cross-attention to text, deformable cross-attention to the image, FFN; positional queries = MLP(sine(box));
  iterative box refinement in inverse-sigmoid space (boxes of later layers keep the gradient of the previous
  layer's refinement, DINO's "look forward twice").
- Heads (`GroundingDINOHead`): `ContrastiveEmbed(log_scale='auto', bias=True)` = query . token / sqrt(hidden) + a
  learned bias (init -log(99)); a 3-layer box MLP; one pair per decoder layer and one for the encoder.
- Contrastive denoising (`CdnQueryGenerator`) in training when targets are given.

Shapes: B images, S image tokens (all levels), L text tokens, Q queries, D decoder layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert

PADDING_LOGIT = -1e4  # logit of padding tokens: sigmoid is exactly 0 in fp32 and it fits fp16 (mmdet uses -inf)


@dataclass
class DinoConfig:
    hidden: int = 256  # MM-Grounding-DINO: embed dims 256
    num_queries: int = 900
    encoder_layers: int = 6
    decoder_layers: int = 6
    num_heads: int = 8  # image deformable attention and all decoder attentions
    ffn: int = 2048  # image encoder / decoder FFN
    text_ffn: int = 1024  # text enhancer layer FFN
    fusion_ffn: int = 1024  # bi-directional image-text fusion (mmdet: embed_dim 1024 in BiAttentionBlock)
    num_levels: int = 4
    num_points: int = 4
    dropout: float = 0.0
    max_text_len: int = 256
    dn_queries: int = 100  # contrastive denoising queries per batch, dynamic groups (0 disables)
    label_noise: float = 0.5
    box_noise: float = 1.0
    text_heads: int = 4  # mmdet text_layer_cfg.self_attn_cfg.num_heads
    fusion_heads: int = 4  # mmdet fusion_layer_cfg.num_heads
    fusion_dropout: float = 0.1  # attention-prob dropout of the fusion (BiAttentionBlock's default; config leaves it)


# ----------------------------------------------------------------------------------------------- small helpers


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _sine(x: Tensor, num_feats: int, temperature: float) -> Tensor:
    """(...,) already scaled coordinates -> (..., num_feats), interleaved sin/cos as DETR's encodings."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=x.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    a = x.float()[..., None] / dim_t
    return torch.stack((a[..., 0::2].sin(), a[..., 1::2].cos()), dim=-1).flatten(-2)


def image_position_encoding(h: int, w: int, hidden: int, device: torch.device) -> Tensor:
    """Normalised sine positions of an h x w map (mmdet SinePositionalEncoding, normalize, temperature 20) -> (h*w,
    hidden), y features first."""
    scale, eps = 2 * math.pi, 1e-6
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + eps) * scale
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + eps) * scale
    pos_y = _sine(y, hidden // 2, 20.0)[:, None].expand(h, w, -1)
    pos_x = _sine(x, hidden // 2, 20.0)[None].expand(h, w, -1)
    return torch.cat([pos_y, pos_x], dim=-1).flatten(0, 1)


def box_position_encoding(boxes: Tensor, hidden: int) -> Tensor:
    """(..., 4) cxcywh in [0, 1] -> (..., 2 * hidden): sine of y, x, w, h (mmdet coordinate_to_encoding)."""
    enc = [_sine(boxes[..., i] * 2 * math.pi, hidden // 2, 10000.0) for i in range(4)]
    return torch.cat([enc[1], enc[0], enc[2], enc[3]], dim=-1).to(boxes.dtype)


def text_position_encoding(position_ids: Tensor, hidden: int) -> Tensor:
    """(B, L) token positions -> (B, L, hidden) (mmdet get_text_sine_pos_embed)."""
    return _sine(position_ids.float() * 2 * math.pi, hidden, 10000.0)


class MLP(nn.Sequential):
    """Linear layers with ReLU in between."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, layers: int) -> None:
        dims = [dim_in] + [hidden] * (layers - 1) + [dim_out]
        mods: list[nn.Module] = []
        for i in range(layers):
            mods.append(nn.Linear(dims[i], dims[i + 1]))
            if i < layers - 1:
                mods.append(nn.ReLU())
        super().__init__(*mods)


def _ffn(dim: int, inner: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, inner), nn.ReLU(), nn.Dropout(dropout), nn.Linear(inner, dim),
                         nn.Dropout(dropout))


# ----------------------------------------------------------------------------------- deformable attention


def ms_deform_attn(value: Tensor, shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor) -> Tensor:
    """Multi-scale deformable attention core in plain torch (as mmcv's multi_scale_deformable_attn_pytorch).

    value (B, S, M, d) for M heads over the flattened levels; locations (B, Q, M, levels, P, 2) as (x, y) in [0, 1]
    of each level; weights (B, Q, M, levels, P). Returns (B, Q, M * d): bilinear samples (zero outside the map,
    pixel centres at (i + 0.5) / size) weighted and summed over levels and points.
    """
    b, _, m, d = value.shape
    _, q, _, n_levels, p, _ = locations.shape
    grids = 2 * locations - 1  # grid_sample's [-1, 1] with align_corners=False
    per_level = value.split([h * w for h, w in shapes], dim=1)
    samples = []
    for lvl, (h, w) in enumerate(shapes):
        v = per_level[lvl].flatten(2).transpose(1, 2).reshape(b * m, d, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # (B*M, Q, P, 2)
        samples.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(samples, dim=-2).flatten(-2)  # (B*M, d, Q, levels*P)
    attn = weights.transpose(1, 2).reshape(b * m, 1, q, n_levels * p)
    return (stacked * attn).sum(-1).view(b, m * d, q).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (mmcv MultiScaleDeformableAttention without its residual)."""

    def __init__(self, dim: int, heads: int, levels: int, points: int) -> None:
        super().__init__()
        self.heads, self.levels, self.points = heads, levels, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # offsets start on a ring of directions, one per head, further out for later points (Deformable DETR)
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.heads, dtype=torch.float32) * (2 * math.pi / self.heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.view(self.heads, 1, 1, 2).repeat(1, self.levels, self.points, 1)
        grid = grid * torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query: Tensor, reference: Tensor, value: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        """query (B, Q, C) with its position added; reference (B, Q, levels, 2 | 4) normalised (x, y[, w, h]);
        value (B, S, C)."""
        b, q, _ = query.shape
        m, n_levels, p = self.heads, self.levels, self.points
        v = self.value_proj(value).view(b, value.shape[1], m, -1)
        offsets = self.sampling_offsets(query).view(b, q, m, n_levels, p, 2)
        attn = self.attention_weights(query).view(b, q, m, n_levels * p).softmax(-1).view(b, q, m, n_levels, p)
        ref = reference[:, :, None, :, None, :]
        if reference.shape[-1] == 2:  # offsets are in pixels of each level
            wh = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
            locations = ref + offsets / wh[None, None, None, :, None, :]
        else:  # offsets are relative to the reference box size
            locations = ref[..., :2] + offsets / p * ref[..., 2:] * 0.5
        return self.output_proj(ms_deform_attn(v, shapes, locations, attn))


# ------------------------------------------------------------------------------------------ encoder layers


class BiAttentionFusion(nn.Module):
    """Image<->text cross attention in both directions from one similarity matrix (mmdet SingleScaleBiAttentionBlock):
    pre-LayerNorm, layer-scale gammas so the fusion starts near identity."""

    def __init__(self, dim: int, inner: int, heads: int, dropout: float, init_gamma: float = 1e-4) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.scale = (inner // heads) ** -0.5
        self.norm_v, self.norm_l = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.v_proj, self.l_proj = nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.values_v_proj, self.values_l_proj = nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.out_v_proj, self.out_l_proj = nn.Linear(inner, dim), nn.Linear(inner, dim)
        self.gamma_v = nn.Parameter(torch.full((dim,), init_gamma))
        self.gamma_l = nn.Parameter(torch.full((dim,), init_gamma))
        for lin in (self.v_proj, self.l_proj, self.values_v_proj, self.values_l_proj, self.out_v_proj,
                    self.out_l_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, vis: Tensor, txt: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        vis, txt = self.norm_v(vis), self.norm_l(txt)
        sim = self._heads(self.v_proj(vis)) * self.scale @ self._heads(self.l_proj(txt)).transpose(-1, -2)
        sim = sim.clamp(-50000, 50000)  # (B, M, S, L); mmdet clamps for fp16
        attn_v = sim.masked_fill(~text_mask[:, None, None, :], torch.finfo(sim.dtype).min).softmax(-1)
        attn_l = sim.transpose(-1, -2).softmax(-1)  # no image padding: every pixel is a valid key
        attn_v = F.dropout(attn_v, self.dropout, self.training)
        attn_l = F.dropout(attn_l, self.dropout, self.training)
        out_v = (attn_v @ self._heads(self.values_l_proj(txt))).transpose(1, 2).flatten(2)
        out_l = (attn_l @ self._heads(self.values_v_proj(vis))).transpose(1, 2).flatten(2)
        return vis + self.gamma_v * self.out_v_proj(out_v), txt + self.gamma_l * self.out_l_proj(out_l)


class TextEnhancerLayer(nn.Module):
    """Post-norm text self-attention + FFN (mmdet DetrTransformerEncoderLayer)."""

    def __init__(self, dim: int, heads: int, inner: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = _ffn(dim, inner, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, txt: Tensor, pos: Tensor, allowed: Tensor) -> Tensor:
        q = txt + pos
        # per (batch, head) mask in torch's b-major order (mmdet's repeat() is head-major: wrong for mixed batches)
        blocked = ~allowed.repeat_interleave(self.heads, dim=0)
        txt = self.norm1(txt + self.drop(self.self_attn(q, q, txt, attn_mask=blocked, need_weights=False)[0]))
        return self.norm2(txt + self.ffn(txt))


class ImageEnhancerLayer(nn.Module):
    """Post-norm deformable self-attention over all levels + FFN (mmdet DeformableDetrTransformerEncoderLayer)."""

    def __init__(self, cfg: DinoConfig) -> None:
        super().__init__()
        self.attn = MSDeformAttn(cfg.hidden, cfg.num_heads, cfg.num_levels, cfg.num_points)
        self.ffn = _ffn(cfg.hidden, cfg.ffn, cfg.dropout)
        self.norm1, self.norm2 = nn.LayerNorm(cfg.hidden), nn.LayerNorm(cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, pos: Tensor, reference: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        x = self.norm1(x + self.drop(self.attn(x + pos, reference, x, shapes)))
        return self.norm2(x + self.ffn(x))


class FeatureEnhancer(nn.Module):
    """Per layer: fusion, then text self-attention, then image deformable self-attention (mmdet's order)."""

    def __init__(self, cfg: DinoConfig) -> None:
        super().__init__()
        n = cfg.encoder_layers
        self.fusion_layers = nn.ModuleList(
            BiAttentionFusion(cfg.hidden, cfg.fusion_ffn, cfg.fusion_heads, cfg.fusion_dropout) for _ in range(n))
        self.text_layers = nn.ModuleList(
            TextEnhancerLayer(cfg.hidden, cfg.text_heads, cfg.text_ffn, cfg.dropout) for _ in range(n))
        self.layers = nn.ModuleList(ImageEnhancerLayer(cfg) for _ in range(n))

    def forward(self, vis: Tensor, vis_pos: Tensor, shapes: list[tuple[int, int]], txt: Tensor, txt_pos: Tensor,
                text_mask: Tensor, text_allowed: Tensor) -> tuple[Tensor, Tensor]:
        reference = encoder_reference_points(shapes, vis.device)[None, :, None, :].expand(
            vis.shape[0], -1, len(shapes), -1)
        for fusion, text_layer, image_layer in zip(self.fusion_layers, self.text_layers, self.layers):
            vis, txt = fusion(vis, txt, text_mask)
            txt = text_layer(txt, txt_pos, text_allowed)
            vis = image_layer(vis, vis_pos, reference, shapes)
        return vis, txt


def encoder_reference_points(shapes: list[tuple[int, int]], device: torch.device) -> Tensor:
    """Pixel centres of every level, normalised (x, y) -> (S, 2) (valid ratios 1: no padding mask)."""
    pts = []
    for h, w in shapes:
        y, x = torch.meshgrid((torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h,
                              (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w, indexing="ij")
        pts.append(torch.stack([x, y], -1).flatten(0, 1))
    return torch.cat(pts)


# ------------------------------------------------------------------------------------------------ decoder


class DecoderLayer(nn.Module):
    """Post-norm: query self-attention, text cross-attention, deformable image cross-attention, FFN."""

    def __init__(self, cfg: DinoConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.self_attn = nn.MultiheadAttention(d, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.cross_attn_text = nn.MultiheadAttention(d, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.cross_attn = MSDeformAttn(d, cfg.num_heads, cfg.num_levels, cfg.num_points)
        self.ffn = _ffn(d, cfg.ffn, cfg.dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(4))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, pos: Tensor, reference: Tensor, memory: Tensor, shapes: list[tuple[int, int]],
                txt: Tensor, text_mask: Tensor, self_mask: Tensor | None) -> Tensor:
        q = x + pos
        x = self.norms[0](x + self.drop(self.self_attn(q, q, x, attn_mask=self_mask, need_weights=False)[0]))
        t = self.cross_attn_text(x + pos, txt, txt, key_padding_mask=~text_mask, need_weights=False)[0]
        x = self.norms[1](x + self.drop(t))
        x = self.norms[2](x + self.drop(self.cross_attn(x + pos, reference, memory, shapes)))
        return self.norms[3](x + self.ffn(x))


class Decoder(nn.Module):
    """DINO decoder with iterative box refinement; returns normed hidden states and the reference boxes each
    layer's head adds its deltas to."""

    def __init__(self, cfg: DinoConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.ref_point_head = MLP(2 * cfg.hidden, cfg.hidden, cfg.hidden, 2)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.hidden = cfg.hidden

    def forward(self, query: Tensor, reference: Tensor, memory: Tensor, shapes: list[tuple[int, int]], txt: Tensor,
                text_mask: Tensor, self_mask: Tensor | None,
                reg_branches: nn.ModuleList) -> tuple[Tensor, list[Tensor]]:
        hidden_states, references = [], [reference]
        for layer, reg in zip(self.layers, reg_branches):
            pos = self.ref_point_head(box_position_encoding(reference, self.hidden))
            ref_in = reference[:, :, None].expand(-1, -1, len(shapes), -1)  # valid ratios are 1
            query = layer(query, pos, ref_in, memory, shapes, txt, text_mask, self_mask)
            new_reference = (reg(query) + inverse_sigmoid(reference, 1e-3)).sigmoid()
            reference = new_reference.detach()  # the next layer sees the box, not its gradient
            hidden_states.append(self.norm(query))
            references.append(new_reference)
        return torch.stack(hidden_states), references


# ---------------------------------------------------------------------------------------------------- heads


class ContrastiveEmbed(nn.Module):
    """Token logits = query . token / sqrt(dim) + bias (mmdet ContrastiveEmbed, log_scale 'auto', bias True)."""

    def __init__(self, prior_prob: float = 0.01) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([-math.log((1 - prior_prob) / prior_prob)]))

    def forward(self, query: Tensor, txt: Tensor, text_mask: Tensor) -> Tensor:
        logits = query @ txt.transpose(-1, -2) / math.sqrt(query.shape[-1]) + self.bias
        return logits.masked_fill(~text_mask[:, None, :], PADDING_LOGIT)


class ContrastiveDenoising(nn.Module):
    """DINO's contrastive denoising queries (mmdet CdnQueryGenerator, dynamic groups).

    Labels: mmdet's GroundingDINO embeds the gt *label index* with a table of num_classes = max_text_len rows and
    replaces a label_noise / 2 share of them by a random index in [0, max_text_len). Our targets carry token maps,
    not labels: a target's label is `labels` when the target dict has it, else the index of its phrase among the
    image's distinct positive maps (the role mmdet's per-caption label plays); the noise is mmdet's.
    """

    def __init__(self, cfg: DinoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.label_embedding = nn.Embedding(cfg.max_text_len, cfg.hidden)

    def _labels(self, target: dict) -> Tensor:
        if "labels" in target:
            labels = target["labels"].long()
        elif len(target["positive_map"]) == 0:
            labels = torch.zeros(0, dtype=torch.long, device=target["positive_map"].device)
        else:
            labels = torch.unique(target["positive_map"] > 0, dim=0, return_inverse=True)[1]
        return labels.clamp(max=self.cfg.max_text_len - 1)

    def forward(self, targets: list[dict], num_matching: int) -> tuple[Tensor, Tensor, Tensor, dict] | None:
        """-> (label queries (B, N, C), reference boxes in logit space (B, N, 4), self-attention mask (N + Q, N + Q)
        True = blocked, meta) with N = 2 * groups * max targets; None when the batch has no target."""
        counts = [len(t["boxes"]) for t in targets]
        max_t = max(counts, default=0)
        if max_t == 0:
            return None
        groups = max(1, self.cfg.dn_queries // max_t)
        boxes = torch.cat([t["boxes"] for t in targets]).float()
        labels = torch.cat([self._labels(t) for t in targets]).to(boxes.device)
        device, n_total = boxes.device, len(boxes)

        # group-major copies: chunk k of 2 * groups holds every target; even chunks positive, odd chunks negative
        labels = labels.repeat(2 * groups)
        noisy = torch.rand(labels.shape, device=device) < self.cfg.label_noise * 0.5
        labels = torch.where(noisy, torch.randint_like(labels, 0, self.cfg.max_text_len), labels)
        ref = inverse_sigmoid(self._noisy_boxes(boxes, groups), 1e-3)

        # scatter into per-image padded slots: chunk k of image b starts at k * max_t
        image = torch.cat([torch.full((c,), i, device=device) for i, c in enumerate(counts)]).repeat(2 * groups)
        local = torch.cat([torch.arange(c, device=device) for c in counts])
        chunk = torch.arange(2 * groups, device=device).repeat_interleave(n_total)
        slot = chunk * max_t + local.repeat(2 * groups)
        n_dn = 2 * groups * max_t
        label_query = boxes.new_zeros(len(targets), n_dn, self.cfg.hidden)
        ref_query = boxes.new_zeros(len(targets), n_dn, 4)
        label_query = label_query.index_put((image, slot), self.label_embedding(labels))
        ref_query = ref_query.index_put((image, slot), ref)
        mask = denoising_attention_mask(max_t, groups, num_matching, device)
        return label_query, ref_query, mask, {"groups": groups, "max_targets": max_t, "num_dn": n_dn}

    def _noisy_boxes(self, boxes: Tensor, groups: int) -> Tensor:
        """Corners moved by up to half the box size (positives, < 1 * scale) or between 1 and 2 halves (negatives)."""
        n = len(boxes)
        xyxy = box_convert(boxes, "cxcywh", "xyxy").repeat(2 * groups, 1)
        half = boxes[:, 2:].repeat(1, 2).repeat(2 * groups, 1) / 2
        part = torch.rand_like(xyxy)
        negative = (torch.arange(2 * groups, device=boxes.device) % 2 == 1).repeat_interleave(n)
        part[negative] += 1.0
        sign = torch.randint_like(xyxy, 0, 2) * 2.0 - 1.0
        xyxy = (xyxy + sign * part * half * self.cfg.box_noise).clamp(0.0, 1.0)
        return box_convert(xyxy, "xyxy", "cxcywh")


def denoising_attention_mask(max_targets: int, groups: int, num_matching: int, device: torch.device) -> Tensor:
    """(N + Q, N + Q) bool, True = may not attend: matching queries never see denoising ones (they would read the
    answers) and each denoising group sees only itself and the matching queries."""
    n_dn = 2 * groups * max_targets
    mask = torch.zeros(n_dn + num_matching, n_dn + num_matching, dtype=torch.bool, device=device)
    mask[n_dn:, :n_dn] = True
    group = torch.arange(n_dn, device=device) // (2 * max_targets)
    mask[:n_dn, :n_dn] = group[:, None] != group[None, :]
    return mask


# -------------------------------------------------------------------------------------------------- the head


class GroundingDINOHead(nn.Module):
    """Image pyramid + text tokens -> grounded boxes (see the module docstring)."""

    def __init__(self, in_channels: list[int], text_width: int, cfg: DinoConfig) -> None:
        super().__init__()
        if len(in_channels) != cfg.num_levels:
            raise ValueError(f"{len(in_channels)} input levels for a head of num_levels={cfg.num_levels}")
        if cfg.hidden % 2:
            raise ValueError("hidden must be even (sine positions split it between x and y)")
        self.cfg = cfg
        d = cfg.hidden
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, d, 1), nn.GroupNorm(min(32, d), d)) for c in in_channels)
        self.text_feat_map = nn.Linear(text_width, d)
        self.level_embed = nn.Parameter(torch.empty(cfg.num_levels, d))
        self.encoder = FeatureEnhancer(cfg)
        self.decoder = Decoder(cfg)
        self.memory_trans_fc = nn.Linear(d, d)
        self.memory_trans_norm = nn.LayerNorm(d)
        self.query_embedding = nn.Embedding(cfg.num_queries, d)
        # one classifier and box MLP per decoder layer, the last pair for the encoder proposals (not shared)
        self.cls_branches = nn.ModuleList(ContrastiveEmbed() for _ in range(cfg.decoder_layers + 1))
        self.reg_branches = nn.ModuleList(MLP(d, d, 4, 3) for _ in range(cfg.decoder_layers + 1))
        self.dn_generator = ContrastiveDenoising(cfg) if cfg.dn_queries > 0 else None
        self._init_weights()

    def _init_weights(self) -> None:
        # mmdet DINO.init_weights: xavier on the transformer's matrices, then the deformable attentions' own init
        for coder in (self.encoder, self.decoder):
            for p in coder.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.xavier_uniform_(self.memory_trans_fc.weight)
        nn.init.normal_(self.level_embed)
        nn.init.xavier_uniform_(self.query_embedding.weight)
        nn.init.xavier_uniform_(self.text_feat_map.weight)
        nn.init.zeros_(self.text_feat_map.bias)
        for reg in self.reg_branches:  # boxes start at the reference / proposal (two-stage: no size prior)
            for p in list(reg.children())[-1].parameters():
                nn.init.zeros_(p)

    # -- pieces of forward

    def _flatten_levels(self, feats: list[Tensor]) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
        """-> tokens (B, S, C), their positions + level embeddings (1, S, C), level shapes."""
        tokens, pos, shapes = [], [], []
        for lvl, (f, proj) in enumerate(zip(feats, self.input_proj)):
            h, w = f.shape[-2:]
            shapes.append((h, w))
            tokens.append(proj(f).flatten(2).transpose(1, 2))
            pos.append(image_position_encoding(h, w, self.cfg.hidden, f.device).to(f.dtype) + self.level_embed[lvl])
        return torch.cat(tokens, 1), torch.cat(pos)[None], shapes

    def _text_inputs(self, text: Tensor, text_mask: Tensor, allowed: Tensor | None,
                     position_ids: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        txt = self.text_feat_map(text)
        b, n = text_mask.shape
        if position_ids is None:
            position_ids = torch.arange(n, device=text.device).expand(b, n)
        if allowed is None:
            allowed = text_mask[:, None, :].expand(b, n, n)
        # every token may see itself, so padding rows never softmax over nothing (mmdet's masks start from eye)
        allowed = allowed.bool() | torch.eye(n, dtype=torch.bool, device=text.device)
        return txt, text_position_encoding(position_ids, self.cfg.hidden).to(txt.dtype), allowed

    def _proposals(self, memory: Tensor, shapes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """One proposal per pixel (its centre, size 0.05 * 2^level), in logit space; border pixels, whose proposal
        reaches outside (0.01, 0.99), get +inf boxes and zeroed memory (mmdet gen_encoder_output_proposals)."""
        props = []
        for lvl, (h, w) in enumerate(shapes):
            centres = encoder_reference_points([(h, w)], memory.device)
            props.append(torch.cat([centres, torch.full_like(centres, 0.05 * 2.0**lvl)], -1))
        proposals = torch.cat(props)[None].expand(memory.shape[0], -1, -1)
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        proposals = torch.log(proposals / (1 - proposals)).masked_fill(~valid, float("inf"))
        out = self.memory_trans_norm(self.memory_trans_fc(memory.masked_fill(~valid, 0.0)))
        return out, proposals

    def _select_queries(self, memory: Tensor, txt: Tensor, text_mask: Tensor,
                        shapes: list[tuple[int, int]]) -> tuple[Tensor, Tensor, Tensor]:
        """Language-guided query selection -> encoder logits (B, Q, L), encoder boxes (B, Q, 4) and the decoder's
        initial references in logit space (B, Q, 4, detached)."""
        out, proposals = self._proposals(memory, shapes)
        logits = self.cls_branches[-1](out, txt, text_mask)
        coords = self.reg_branches[-1](out) + proposals
        k = min(self.cfg.num_queries, memory.shape[1])
        top = logits.max(-1).values.topk(k, dim=1).indices
        enc_logits = logits.gather(1, top[..., None].expand(-1, -1, logits.shape[-1]))
        enc_coords = coords.gather(1, top[..., None].expand(-1, -1, 4))
        return enc_logits, enc_coords.sigmoid(), enc_coords.detach()

    def _predict(self, hidden_states: Tensor, references: list[Tensor], txt: Tensor,
                 text_mask: Tensor) -> tuple[Tensor, Tensor]:
        logits, boxes = [], []
        for lvl, hs in enumerate(hidden_states):
            logits.append(self.cls_branches[lvl](hs, txt, text_mask))
            boxes.append((self.reg_branches[lvl](hs) + inverse_sigmoid(references[lvl])).sigmoid())
        return torch.stack(logits), torch.stack(boxes)

    def forward(self, feats: list[Tensor], text: Tensor, text_mask: Tensor,
                text_self_attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                targets: list[dict] | None = None) -> dict:
        text_mask = text_mask.bool()
        if text.shape[1] > self.cfg.max_text_len:
            raise ValueError(f"{text.shape[1]} text tokens, more than max_text_len={self.cfg.max_text_len}")
        vis, vis_pos, shapes = self._flatten_levels(feats)
        txt, txt_pos, allowed = self._text_inputs(text, text_mask, text_self_attention_mask, position_ids)
        memory, txt = self.encoder(vis, vis_pos, shapes, txt, txt_pos, text_mask, allowed)
        enc_logits, enc_boxes, reference = self._select_queries(memory, txt, text_mask, shapes)

        b, k = reference.shape[:2]
        query = self.query_embedding.weight[:k][None].expand(b, -1, -1)
        dn = None
        if self.training and targets is not None and self.dn_generator is not None:
            dn = self.dn_generator(targets, k)
        self_mask, n_dn = None, 0
        if dn is not None:
            dn_query, dn_reference, self_mask, meta = dn
            n_dn = meta["num_dn"]
            query = torch.cat([dn_query, query], 1)
            reference = torch.cat([dn_reference, reference], 1)

        hidden, refs = self.decoder(query, reference.sigmoid(), memory, shapes, txt, text_mask, self_mask,
                                    self.reg_branches)
        logits, boxes = self._predict(hidden, refs, txt, text_mask)
        out: dict[str, Any] = {"logits": logits[:, :, n_dn:], "boxes": boxes[:, :, n_dn:], "enc_logits": enc_logits,
               "enc_boxes": enc_boxes, "dn": None}
        if dn is not None:
            out["dn"] = {"logits": logits[:, :, :n_dn], "boxes": boxes[:, :, :n_dn], **dn[3]}
        return out
