"""Training samples for the pretraining loop: an image-caption source, augmented and tokenized, as tensors.

Every random choice is seeded by (seed, position), so a resumed run sees the same samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from aimv2_eval.backbones.base import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from aimv2_eval.core.pretrain import native_grid, sample_index
from aimv2_eval.data.pairs import PairSource
from aimv2_eval.data.tokenizer import Tokenizer
from aimv2_eval.errors import UserError


@dataclass(frozen=True)
class Augment:
    crop_size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    interpolation: str
    hflip: float


_INTERP = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
           "nearest": Image.Resampling.NEAREST}


def random_resized_crop_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
                            rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, driven by a numpy generator: (left, top, w, h)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height  # fallback: centre crop at the closest allowed ratio
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class Sampler:
    """`(position, area) -> (image, tokens)` for the loop; random choices seeded by (seed, position).

    Images are normalised with AIMv2's released preprocessing (OpenAI CLIP mean / std), which the export writes
    into preprocessor_config.json.
    """

    def __init__(self, source: PairSource, tok: Tokenizer, aug: Augment, seed: int, patch_size: int) -> None:
        self.source, self.tok, self.aug, self.seed, self.patch = source, tok, aug, seed, patch_size
        self.mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
        self.std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
        if aug.interpolation not in _INTERP:
            raise UserError(f"unknown interpolation {aug.interpolation!r}; choose one of {', '.join(_INTERP)}")

    def image(self, position: int, area: int | None) -> tuple[Image.Image, str]:
        pair = self.source[sample_index(position, len(self.source), self.seed)]
        rng = np.random.default_rng([self.seed, position, 2])
        if pair.flippable and rng.random() < self.aug.hflip:
            pair = pair.flipped()
        img, interp = pair.image, _INTERP[self.aug.interpolation]
        if area is None:
            left, top, w, h = random_resized_crop_box(img.width, img.height, self.aug.scale, self.aug.ratio, rng)
            s = self.aug.crop_size
            img = img.resize((s, s), interp, box=(left, top, left + w, top + h))
        else:  # native resolution (Section 2.4): fit `area` patches, keep the aspect ratio, no crop
            gh, gw = native_grid(img.height, img.width, area)
            img = img.resize((gw * self.patch, gh * self.patch), interp)
        return img, pair.caption

    def __call__(self, position: int, area: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        img, caption = self.image(position, area)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - self.mean) / self.std, self.tok(caption)[0]
