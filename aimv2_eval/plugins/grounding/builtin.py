"""The built-in grounding engine: our ViTDet backbone + SimpleFPN (strides 8, 16, 32 and a max-pooled 64: the four
levels MM-Grounding-DINO reads from Swin through its ChannelMapper) feeding the plain-torch Grounding DINO of
`dino.py`, with a registry text encoder under the sub-sentence mask (`text.py`). Needs nothing but pip.

Engine interface (shared with `mmdet_engine.MMDetGroundingDINO`; the plugin calls only this):
  forward(images, captions, targets) -> losses        targets[i]: boxes (N, 4) xyxy input px, spans per box
  predict(images, captions, phrases, max_detections)  -> per image boxes xyxy, scores, labels (phrase index)
  predict_prompts(images, prompts, max_detections)    -> [image][prompt] predictions, every prompt on every image
  backbone (the registry ViT), text_encoder, heads() (everything else)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.ops import box_convert

from aimv2_eval.dense.vitdet import SimpleFPN, ViTDetBackbone
from aimv2_eval.plugins.grounding import text
from aimv2_eval.plugins.grounding.dino import DinoConfig, GroundingDINOHead
from aimv2_eval.plugins.grounding.loss import grounding_loss, predict_phrases

LEVEL_STRIDES = (8, 16, 32)  # + the max-pooled 64


def dino_config(cfg: dict[str, Any]) -> DinoConfig:
    known = DinoConfig.__dataclass_fields__
    return DinoConfig(**{k: v for k, v in (cfg.get("dino") or {}).items() if k in known},
                      max_text_len=int(cfg["max_text_len"]))


class BuiltinGroundingDINO(nn.Module):
    engine = "builtin"

    def __init__(self, backbone: nn.Module, text_encoder: nn.Module, cfg: dict[str, Any], image_size: int) -> None:
        super().__init__()
        text.require_fast_tokenizer(text_encoder, text.SPECIAL_TOKENS)
        self.body = ViTDetBackbone(backbone, cfg["window"], cfg["global_blocks"], cfg["feature_norm"])
        channels = int(cfg["fpn_channels"])
        self.fpn = SimpleFPN(self.body.channels, channels, strides=LEVEL_STRIDES)
        self.text_encoder = text_encoder
        dino = dino_config(cfg)
        self.head = GroundingDINOHead([channels] * (len(LEVEL_STRIDES) + 1), text_encoder.meta.token_width, dino)
        self.max_text_len = dino.max_text_len
        self.image_size = int(image_size)

    @property
    def backbone(self) -> nn.Module:
        return self.body.vit

    def heads(self) -> nn.ModuleList:
        return nn.ModuleList([self.fpn, self.head])

    def _forward(self, images: torch.Tensor, tokens: text.Tokens, targets: list[dict] | None = None) -> dict:
        return self._head(self.fpn(self.body(images)), tokens, targets)

    def _head(self, levels: list[torch.Tensor], tokens: text.Tokens, targets: list[dict] | None = None) -> dict:
        words = text.encode(self.text_encoder, tokens)
        if words.shape[0] != levels[0].shape[0]:  # one prompt for the whole batch: encoded once, shared
            b = levels[0].shape[0]
            words = words.expand(b, -1, -1)
            tokens = text.Tokens(*(t.expand(b, *t.shape[1:]) for t in (
                tokens.input_ids, tokens.token_type_ids, tokens.mask, tokens.offsets, tokens.self_attention,
                tokens.position_ids)))
        return self.head(levels, words, tokens.mask, tokens.self_attention, tokens.position_ids, targets)

    def forward(self, images: torch.Tensor, captions: list[str], targets: list[dict]) -> dict[str, torch.Tensor]:
        """Training losses (forward, so that DistributedDataParallel sees the call)."""
        tokens = text.tokenize(self.text_encoder, captions, self.max_text_len)
        size = images.shape[-1]
        # a box's target: the tokens of all its spans (a box may ground several spans of one caption)
        head_targets = [{"boxes": box_convert(t["boxes"].float() / size, "xyxy", "cxcywh").to(images.device),
                         "positive_map": text.phrase_maps(tokens, i, t["spans"], "box").to(images.device)}
                        for i, t in enumerate(targets)]
        tokens = tokens.to(images.device)
        out = self._forward(images, tokens, head_targets)
        return grounding_loss(out, head_targets, tokens.mask)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, captions: list[str], phrases: list[list[list[tuple[int, int]]]],
                max_detections: int) -> list[dict[str, torch.Tensor]]:
        tokens = text.tokenize(self.text_encoder, captions, self.max_text_len)
        maps = [text.phrase_maps(tokens, i, p).to(images.device) for i, p in enumerate(phrases)]
        out = self._forward(images, tokens.to(images.device))
        size = tuple(images.shape[-2:])
        return predict_phrases(out["logits"][-1], out["boxes"][-1], maps, size, max_detections)

    @torch.no_grad()
    def predict_prompts(self, images: torch.Tensor, prompts: list[tuple[str, list[list[tuple[int, int]]]]],
                        max_detections: int) -> list[list[dict[str, torch.Tensor]]]:
        """Every (caption, phrases) prompt on every image -> [image][prompt] predictions. The image pyramid is
        computed once and each prompt encoded once for the batch (LVIS: 31 chunked prompts per image)."""
        levels = self.fpn(self.body(images))
        size, out = tuple(images.shape[-2:]), [[] for _ in images]
        for caption, phrases in prompts:
            tokens = text.tokenize(self.text_encoder, [caption], self.max_text_len)
            maps = [text.phrase_maps(tokens, 0, phrases).to(images.device)] * len(images)
            res = self._head(levels, tokens.to(images.device))
            for per_image, pred in zip(out, predict_phrases(res["logits"][-1], res["boxes"][-1], maps, size,
                                                            max_detections)):
                per_image.append(pred)
        return out

