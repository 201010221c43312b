"""The paper's grounding model: mmdetection 3.3's MM-Grounding-DINO (`GroundingDINO`) with a registry ViT in ViTDet
form as its backbone and a registry text encoder as its language model, built from mmdet's own config file
`mm_grounding_dino/grounding_dino_swin-t_pretrain_obj365.py` (shipped inside the mmdet wheel; its refcoco / lvis /
coco fine-tuning configs inherit the same model block). Installed with `bash scripts/install_detection.sh`.

Changes to that config, and why:
- backbone: `AIMv2EvalViTDet` (window attention, global blocks) in place of Swin-T;
- neck: `AIMv2EvalGroundingNeck` = ViTDet's SimpleFPN at strides 8, 16, 32 and a max-pooled 64 (the 4 levels the
  detector reads; no stride-4 stage) followed by mmdet's ChannelMapper exactly as the config maps Swin's stages
  (1x1 conv, GroupNorm 32, no activation) to the transformer width;
- language_model: `AIMv2EvalLanguageModel`, a registry text encoder behind the interface of mmdet's `BertModel`
  (whose `batch_encode_plus` and 3-D masks do not run on transformers 5);
- detector: `AIMv2EvalGroundingDINO`, mmdet's GroundingDINO made width-generic (`detector_class`): identical at the
  paper's width 256, and small widths possible for the embedded tasks;
- sizes from the protocol; `num_cp` 0 (the config checkpoints the encoder through fairscale, not a dependency here);
- the data preprocessor only batches: our transforms normalise and pad already.
Kept as mmdet has it, though it differs from the built-in engine: mmdet's encoder repeats each caption's text
self-attention mask heads-first (`repeat(num_heads, 1, 1)`) where torch's attention reads batch-first, so in a batch
of different captions some heads of one sample use another sample's mask; the built-in engine orders it per sample.

Registered names, usable from any mmdet config once `register()` ran:
  `AIMv2EvalLanguageModel`  language model: an aimv2-eval BERT-like text encoder (built `text_encoder`, or `name`)
  `AIMv2EvalGroundingNeck`  neck: SimpleFPN (strides 8-64) + ChannelMapper
  `AIMv2EvalGroundingDINO`  detector: GroundingDINO at any transformer width
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from aimv2_eval.dense import mmdet_glue
from aimv2_eval.dense.vitdet import SimpleFPN
from aimv2_eval.errors import UserError
from aimv2_eval.plugins.grounding import text

INSTALL = mmdet_glue.INSTALL
CONFIG = "mm_grounding_dino/grounding_dino_swin-t_pretrain_obj365.py"
TRANSFORMER_WIDTH = 256  # the width mmdet's text-position and reference-box sine encodings assume
LEVEL_STRIDES = (8, 16, 32)  # SimpleFPN levels the detector reads, + the max-pooled stride 64

DEFAULTS: dict[str, Any] = {"window": 16, "global_blocks": None, "feature_norm": True, "fpn_channels": 256}


def available() -> bool:
    return mmdet_glue.available()


@contextlib.contextmanager
def _known_warnings():
    """Silence two harmless upstream warnings raised on every call (mmcv's decoder self-attention without a key
    position, by design in DINO; torch's meshgrid indexing notice from mmdet's reference points)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="position encoding of key is")
        warnings.filterwarnings("ignore", message="torch.meshgrid")
        yield


# ---------------------------------------------------------------- language model
class _TextBody(nn.Module):
    """Holds the text encoder where GroundingDINO looks for the width (`language_backbone.body.language_dim`)."""

    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text = text_encoder
        self.language_dim = int(text_encoder.model.config.hidden_size)


class AIMv2EvalLanguageModel(nn.Module):
    """mmdet's `BertModel` contract over a registry text encoder: captions -> dict(embedded, masks, hidden,
    position_ids, text_token_mask), each caption's sub-sentences (split after every special token) encoded
    independently, as Grounding DINO's sub-sentence representation."""

    def __init__(self, text_encoder: nn.Module | None = None, name: str | None = None, pretrained: bool = True,
                 max_tokens: int = 256, pad_to_max: bool = False, use_sub_sentence_represent: bool = True,
                 special_tokens_list: Sequence[str] = ("[CLS]", "[SEP]", ".", "?"), **unused: Any) -> None:
        super().__init__()
        if text_encoder is None:
            if name is None:
                raise UserError("AIMv2EvalLanguageModel needs `name` (an aimv2-eval text encoder) or a built "
                                "`text_encoder`")
            from aimv2_eval.text import create_text_encoder

            text_encoder = create_text_encoder(name, pretrained=pretrained, trainable=True)
        text.require_fast_tokenizer(text_encoder, special_tokens_list)
        self.language_backbone = nn.Sequential(OrderedDict(body=_TextBody(text_encoder)))
        self.tokenizer = text_encoder.hf_tokenizer
        self.max_tokens = int(max_tokens)
        self.pad_to_max = bool(pad_to_max)
        self.use_sub_sentence_represent = bool(use_sub_sentence_represent)
        self.special_tokens = self.tokenizer.convert_tokens_to_ids(list(special_tokens_list))
        # mmdet builds BERT without its pooler (add_pooling_layer=False): keep ours out of the optimizer and of DDP
        pooler = getattr(text_encoder.model, "pooler", None)
        if pooler is not None:
            pooler.requires_grad_(False)

    @property
    def text_encoder(self) -> nn.Module:
        return self.language_backbone.body.text

    def init_weights(self) -> None:
        """Pretrained weights come from the registry; mmdet's initialisation must not reach them (transformers
        models have an `init_weights` of their own that mmdet's recursion would call)."""

    def tokenize(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        out = self.tokenizer(list(captions), max_length=self.max_tokens, truncation=True, return_tensors="pt",
                             padding="max_length" if self.pad_to_max else "longest")
        return {k: v for k, v in out.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def forward(self, captions: Sequence[str], **kwargs: Any) -> dict[str, torch.Tensor]:
        from mmdet.models.language_models.bert import generate_masks_with_special_tokens_and_transfer_map

        model = self.text_encoder.model
        device = next(model.parameters()).device
        tok = {k: v.to(device) for k, v in self.tokenize(captions).items()}
        real = tok["attention_mask"]
        if not self.use_sub_sentence_represent:
            hidden = model(**tok).last_hidden_state
            return {"embedded": hidden * real.unsqueeze(-1).to(hidden.dtype), "masks": real, "hidden": hidden}
        # (B, L, L) bool: a token sees only its own sub-sentence; positions restart at 0 in each (mmdet's own code)
        masks, position_ids = generate_masks_with_special_tokens_and_transfer_map(tok, self.special_tokens)
        # transformers 5 passes a ready 4-D additive mask through untouched (a 3-D bool one trips its mask builder)
        hidden = text.bert_features(model, tok["input_ids"], tok.get("token_type_ids"), masks, position_ids)
        return {"embedded": hidden, "masks": masks, "hidden": hidden, "position_ids": position_ids,
                "text_token_mask": real.bool()}


# ---------------------------------------------------------------- neck
class AIMv2EvalGroundingNeck(nn.Module):
    """(stride-16 map,) -> 4 maps at strides 8-64, `hidden` wide: SimpleFPN, then mmdet's ChannelMapper (built from
    `mapper`, the config's neck block)."""

    def __init__(self, in_channels: int, fpn_channels: int, mapper: dict[str, Any]) -> None:
        super().__init__()
        from mmdet.registry import MODELS

        self.fpn = SimpleFPN(in_channels, fpn_channels, strides=LEVEL_STRIDES)  # + the max-pooled stride 64
        self.mapper = MODELS.build({**mapper, "in_channels": [fpn_channels] * 4, "num_outs": 4})

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        # contiguous: LayerNorm2d leaves channels-last strides (see the vitdet engine's neck)
        return self.mapper([t.contiguous() for t in self.fpn(inputs[0])])

    def init_weights(self) -> None:
        """The mapper's Xavier init (mmdet's); the FPN keeps its torch initialisation, as in the vitdet engine."""
        self.mapper.init_weights()


# ---------------------------------------------------------------- detector
@functools.cache
def detector_class() -> type:
    """mmdet's GroundingDINO, made width-generic. Two of its encodings are fixed at 256 wide whatever `embed_dims`:
    the text positions' sine encoding in the encoder and the reference boxes' (4 x 128) in the decoder. Here the text
    positions are encoded at the model's width and the decoder's reference-point MLP reads the 512-wide box encoding;
    at width 256 (the paper's) both are exactly mmdet's."""
    from mmdet.models.detectors import GroundingDINO
    from mmdet.models.layers import MLP
    from mmdet.models.layers.transformer.utils import get_text_sine_pos_embed

    class AIMv2EvalGroundingDINO(GroundingDINO):
        def _init_layers(self) -> None:
            super()._init_layers()
            if self.embed_dims != TRANSFORMER_WIDTH:
                self.decoder.ref_point_head = MLP(2 * TRANSFORMER_WIDTH, self.embed_dims, self.embed_dims, 2)

        def forward_encoder(self, feat: torch.Tensor, feat_mask: torch.Tensor, feat_pos: torch.Tensor,
                            spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                            valid_ratios: torch.Tensor, text_dict: dict) -> dict:
            text_mask = text_dict["text_token_mask"]
            pos_text = get_text_sine_pos_embed(text_dict["position_ids"][..., None], num_pos_feats=self.embed_dims,
                                               exchange_xy=False)
            memory, memory_text = self.encoder(
                query=feat, query_pos=feat_pos, key_padding_mask=feat_mask, spatial_shapes=spatial_shapes,
                level_start_index=level_start_index, valid_ratios=valid_ratios, memory_text=text_dict["embedded"],
                text_attention_mask=~text_mask, pos_text=pos_text, position_ids=None,
                text_self_attention_masks=text_dict["masks"])
            return {"memory": memory, "memory_mask": feat_mask, "spatial_shapes": spatial_shapes,
                    "memory_text": memory_text, "text_token_mask": text_mask}

    return AIMv2EvalGroundingDINO


def register() -> None:
    """Put our modules (and the ViTDet backbone) into mmdet's registry (idempotent)."""
    mmdet_glue.register()
    from mmdet.registry import MODELS

    for name, cls in (("AIMv2EvalLanguageModel", AIMv2EvalLanguageModel),
                      ("AIMv2EvalGroundingNeck", AIMv2EvalGroundingNeck),
                      ("AIMv2EvalGroundingDINO", detector_class())):
        MODELS.register_module(name=name, module=cls, force=True)


# ---------------------------------------------------------------- config
def base_config() -> dict[str, Any]:
    """The `model` block of mmdet's MM-Grounding-DINO config, as a plain dict."""
    import mmdet
    from mmengine.config import Config

    path = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", CONFIG)
    if not os.path.isfile(path):
        raise UserError(f"mmdet's {CONFIG} is missing from the installed wheel; reinstall with `{INSTALL}`")
    return Config.fromfile(path).to_dict()["model"]


def build_config(backbone: nn.Module, text_encoder: nn.Module, cfg: dict[str, Any]) -> dict[str, Any]:
    """MM-Grounding-DINO's model block with our backbone, neck and language model, sized by `cfg`: the protocol
    (window, global_blocks, feature_norm, fpn_channels, max_text_len, max_detections) with the transformer's sizes
    at its top level or in its `dino` block (hidden, num_queries, encoder_layers, decoder_layers, num_heads, ffn,
    text_ffn, fusion_ffn, text_heads, fusion_heads, num_levels, num_points, dropout, fusion_dropout, dn_queries,
    label_noise, box_noise). A size not given keeps the config's value, or its ratio to the visual layers'."""
    model = base_config()
    enc, dec, head, dn = model["encoder"], model["decoder"], model["bbox_head"], model["dn_cfg"]
    cfg = {**DEFAULTS, **cfg, **(cfg.get("dino") or {})}
    vis, text_layer, fusion = enc["layer_cfg"], enc["text_layer_cfg"], enc["fusion_layer_cfg"]
    base_heads, base_ffn = dec["layer_cfg"]["self_attn_cfg"]["num_heads"], vis["ffn_cfg"]["feedforward_channels"]

    hidden = int(cfg.get("hidden", vis["self_attn_cfg"]["embed_dims"]))
    heads = int(cfg.get("num_heads", base_heads))
    ffn = int(cfg.get("ffn", base_ffn))
    text_heads = int(cfg.get("text_heads", max(1, heads * text_layer["self_attn_cfg"]["num_heads"] // base_heads)))
    fusion_heads = int(cfg.get("fusion_heads", max(1, heads * fusion["num_heads"] // base_heads)))
    text_ffn = int(cfg.get("text_ffn", max(1, ffn * text_layer["ffn_cfg"]["feedforward_channels"] // base_ffn)))
    fusion_ffn = int(cfg.get("fusion_ffn", max(1, ffn * fusion["embed_dim"] // base_ffn)))
    for what, width, n in (("hidden", hidden, heads), ("hidden", hidden, text_heads),
                           ("fusion_ffn", fusion_ffn, fusion_heads)):
        if width % n:
            raise UserError(f"grounding {what} {width} is not divisible by its {n} attention heads")
    if hidden % 2:
        raise UserError(f"grounding hidden must be even (a sine encoding per axis), got {hidden}")
    if int(cfg.get("num_levels", 4)) != 4:
        raise UserError(f"grounding reads 4 pyramid levels (strides 8-64), got num_levels {cfg['num_levels']}")
    max_text = int(cfg.get("max_text_len", head["contrastive_cfg"]["max_text_len"]))

    model["type"] = "AIMv2EvalGroundingDINO"
    model["data_preprocessor"].update(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], bgr_to_rgb=False)
    model["backbone"] = {"type": "AIMv2EvalViTDet", "backbone": backbone, "window": cfg["window"],
                         "global_blocks": cfg["global_blocks"], "feature_norm": cfg["feature_norm"]}
    mapper = {k: v for k, v in model["neck"].items() if k not in ("in_channels", "num_outs")}
    mapper["out_channels"] = hidden
    if mapper.get("norm_cfg", {}).get("type") == "GN":  # 32 groups, or fewer where the width is not a multiple
        mapper["norm_cfg"] = {**mapper["norm_cfg"], "num_groups": math.gcd(mapper["norm_cfg"]["num_groups"], hidden)}
    model["neck"] = {"type": "AIMv2EvalGroundingNeck", "in_channels": backbone.meta.embed_dim,
                     "fpn_channels": int(cfg["fpn_channels"]), "mapper": mapper}
    lm = model["language_model"]
    model["language_model"] = {"type": "AIMv2EvalLanguageModel", "text_encoder": text_encoder, "max_tokens": max_text,
                               "pad_to_max": lm["pad_to_max"], "special_tokens_list": lm["special_tokens_list"],
                               "use_sub_sentence_represent": lm["use_sub_sentence_represent"]}
    model["num_queries"] = int(cfg.get("num_queries", model["num_queries"]))
    model["positional_encoding"]["num_feats"] = hidden // 2

    enc["num_layers"] = int(cfg.get("encoder_layers", enc["num_layers"]))
    enc["num_cp"] = 0
    vis["self_attn_cfg"].update(embed_dims=hidden, num_heads=heads)
    vis["ffn_cfg"].update(embed_dims=hidden, feedforward_channels=ffn)
    text_layer["self_attn_cfg"].update(embed_dims=hidden, num_heads=text_heads)
    text_layer["ffn_cfg"].update(embed_dims=hidden, feedforward_channels=text_ffn)
    fusion.update(v_dim=hidden, l_dim=hidden, embed_dim=fusion_ffn, num_heads=fusion_heads)
    if "fusion_dropout" in cfg:  # the config leaves it at the block's default (0.1)
        fusion["dropout"] = float(cfg["fusion_dropout"])
    dec["num_layers"] = int(cfg.get("decoder_layers", dec["num_layers"]))
    layer = dec["layer_cfg"]
    for attn in ("self_attn_cfg", "cross_attn_text_cfg", "cross_attn_cfg"):
        layer[attn].update(embed_dims=hidden, num_heads=heads)
    layer["ffn_cfg"].update(embed_dims=hidden, feedforward_channels=ffn)
    if "num_points" in cfg:  # deformable sampling points (the config keeps mmcv's default, 4)
        vis["self_attn_cfg"]["num_points"] = layer["cross_attn_cfg"]["num_points"] = int(cfg["num_points"])
    if "dropout" in cfg:
        for block in (vis, text_layer, layer):
            for key, sub in block.items():
                if key.endswith("attn_cfg"):
                    sub["dropout"] = float(cfg["dropout"])
            block["ffn_cfg"]["ffn_drop"] = float(cfg["dropout"])

    head["embed_dims"] = hidden  # the head's default is 256; the config relies on it
    head["num_classes"] = max_text  # phrase labels group tokens: never more than the tokens
    head["contrastive_cfg"]["max_text_len"] = max_text
    if "dn_queries" in cfg:
        dn["group_cfg"]["num_dn_queries"] = int(cfg["dn_queries"])
    dn["label_noise_scale"] = float(cfg.get("label_noise", dn["label_noise_scale"]))
    dn["box_noise_scale"] = float(cfg.get("box_noise", dn["box_noise_scale"]))
    model["test_cfg"]["max_per_img"] = int(cfg.get("max_detections", model["test_cfg"]["max_per_img"]))
    return model


# ---------------------------------------------------------------- engine
class MMDetGroundingDINO(nn.Module):
    """mmdet's GroundingDINO behind the grounding plugin's engine interface."""

    engine = "mmdet"

    def __init__(self, backbone: nn.Module, text_encoder: nn.Module, cfg: dict[str, Any], image_size: int) -> None:
        super().__init__()
        text.require_fast_tokenizer(text_encoder)
        register()
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        from mmengine.config import ConfigDict

        register_all_modules(init_default_scope=True)
        # ConfigDict for mmdet's attribute access; it keeps the backbone and the text encoder by reference
        with mmdet_glue.quiet_mmengine():
            self.detector = MODELS.build(ConfigDict(build_config(backbone, text_encoder, cfg)))
            # mmdet's own initialisation of the transformer and heads; our backbone and language model make it a
            # no-op on themselves (their init_weights), so pretrained weights stay
            self.detector.init_weights()
        self.image_size = int(image_size)
        self.max_text_len = self.detector.bbox_head.max_text_len

    @property
    def backbone(self) -> nn.Module:
        return self.detector.backbone.body.vit

    @property
    def text_encoder(self) -> nn.Module:
        return self.detector.language_model.text_encoder

    def heads(self) -> nn.Module:
        """Everything but the backbone and the text encoder (neck, transformer, head, text projection, denoising
        embeddings, level embeddings), built on each call so no parameter is registered twice in this module."""
        d = self.detector
        rest = nn.Module()
        rest.parts = nn.ModuleList(m for n, m in d.named_children() if n not in ("backbone", "language_model"))
        for n, p in d.named_parameters(recurse=False):  # bare parameters of the detector (level_embed)
            rest.register_parameter(n, p)
        return rest

    # ------------------------------------------------------------ data samples
    def _check_caption(self, caption: str) -> None:
        n = len(self.detector.language_model.tokenizer(caption)["input_ids"])
        if n > self.max_text_len:
            raise UserError(f"caption of {n} tokens is longer than max_text_len {self.max_text_len}: {caption[:60]!r}")

    @staticmethod
    def _spans(caption: str, spans: Sequence[Sequence[int]]) -> list[list[int]]:
        out = [[int(s), int(e)] for s, e in spans]
        if not out or any(not 0 <= s < e <= len(caption) for s, e in out):
            raise UserError(f"bad phrase spans {list(spans)} for a caption of {len(caption)} characters")
        return out

    def _sample(self, i: int, images: torch.Tensor, caption: str, **meta: Any) -> Any:
        from mmdet.structures import DetDataSample

        self._check_caption(caption)
        h, w = images.shape[-2:]
        return DetDataSample(metainfo={"img_shape": (h, w), "ori_shape": (h, w), "pad_shape": (h, w),
                                       "scale_factor": (1.0, 1.0), "img_id": i, "text": caption, **meta})

    def _train_sample(self, i: int, images: torch.Tensor, caption: str, target: dict[str, Any]) -> Any:
        from mmengine.structures import InstanceData

        # one label per distinct phrase (its span list), as mmdet's grounding datasets number phrases
        phrases: dict[tuple, int] = {}
        labels = []
        for spans in target["spans"]:
            key = tuple(tuple(s) for s in self._spans(caption, spans))
            labels.append(phrases.setdefault(key, len(phrases)))
        boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
        if len(labels) != len(boxes):
            raise UserError(f"{len(boxes)} boxes but {len(labels)} span lists for caption {caption[:60]!r}")
        sample = self._sample(i, images, caption,
                              tokens_positive={k: [list(s) for s in key] for key, k in phrases.items()})
        gt = InstanceData()
        gt.bboxes = boxes.to(images.device)
        gt.labels = torch.tensor(labels, dtype=torch.long, device=images.device)
        sample.gt_instances = gt
        return sample

    def _preprocess(self, images: torch.Tensor, samples: list[Any], training: bool) -> dict[str, Any]:
        return self.detector.data_preprocessor({"inputs": list(images), "data_samples": samples}, training=training)

    # ------------------------------------------------------------ interface
    def forward(self, images: torch.Tensor, captions: list[str], targets: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Training losses (forward, so that DistributedDataParallel sees the call)."""
        self.detector.train()
        samples = [self._train_sample(i, images, c, t) for i, (c, t) in enumerate(zip(captions, targets))]
        data = self._preprocess(images, samples, training=True)
        with _known_warnings():
            raw = self.detector.loss(data["inputs"], data["data_samples"])
        # lists (per level) are summed; the denoising focal loss comes back with shape (1,)
        return {k: torch.as_tensor(sum(v) if isinstance(v, list) else v).sum() for k, v in raw.items() if "loss" in k}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, captions: list[str], phrases: list[list[list[tuple[int, int]]]],
                max_detections: int) -> list[dict[str, torch.Tensor]]:
        if any(not p for p in phrases):
            raise UserError("every caption needs at least one phrase to ground")
        self.detector.eval()
        samples = [self._sample(i, images, c, custom_entities=True,
                                tokens_positive=[self._spans(c, spans) for spans in p])
                   for i, (c, p) in enumerate(zip(captions, phrases))]
        head = self.detector.bbox_head
        # the head ranks (query, phrase) pairs: it cannot return more than queries x phrases of the smallest prompt
        most = self.detector.num_queries * min(len(p) for p in phrases)
        saved = head.test_cfg.get("max_per_img")
        head.test_cfg["max_per_img"] = min(int(max_detections), most)
        try:
            data = self._preprocess(images, samples, training=False)
            with _known_warnings():
                results = self.detector.predict(data["inputs"], data["data_samples"], rescale=False)
        finally:
            head.test_cfg["max_per_img"] = saved
        return [{"boxes": s.pred_instances.bboxes, "scores": s.pred_instances.scores,
                 "labels": s.pred_instances.labels.long()} for s in results]

    @torch.no_grad()
    def predict_prompts(self, images: torch.Tensor, prompts: list[tuple[str, list[list[tuple[int, int]]]]],
                        max_detections: int) -> list[list[dict[str, torch.Tensor]]]:
        """Every (caption, phrases) prompt on every image -> [image][prompt] predictions. mmdet's predict runs the
        backbone again for every prompt (the built-in engine shares it; left as is here)."""
        out: list[list[dict[str, torch.Tensor]]] = [[] for _ in images]
        for caption, phrases in prompts:
            for per_image, pred in zip(out, self.predict(images, [caption] * len(images), [phrases] * len(images),
                                                         max_detections)):
                per_image.append(pred)
        return out
