"""Detection transforms shared by both engines (torchvision's and mmdet's Mask R-CNN).

`LargeScaleJitter` is ViTDet's training recipe as mmdet's `configs/common/lsj-100e_coco-instance.py` runs it:
RandomResize (target `size`x`size` times a ratio in `scale`, aspect kept), RandomCrop (absolute_range: at most
`size`x`size`, recompute_bbox from the cropped masks, allow_negative_crop), FilterAnnotations (w and h > 1e-2),
RandomFlip 0.5, then the data preprocessor's pad to `size`x`size` (zeros after normalisation). Unlike mmdet, a crop
that leaves no object gives empty targets instead of resampling another image (Mask R-CNN trains on empty targets).
`ResizePad` is the evaluation resize: longest side to `size`, padded bottom/right; `unmap_predictions` maps the
model's boxes and mask probabilities back to the original pixels.

Both transforms take `(sample, epoch, index)` and return `(image (3, size, size) float, target, meta)`:
  target = {"boxes": (N, 4) float32 xyxy, "labels": (N,) int64, "masks": (N, size, size) uint8 (when the sample has
            masks)}, crowd objects removed;
  meta = {"image_id", "scale", "orig_size": (h, w), "valid_size": (h, w), "flip", "offset": (y, x)}.
Randomness comes from a generator seeded by (seed, epoch, index) alone, so that every worker, rank and resumed run
draws the same jitter for the same sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as nnf
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from torchvision.transforms.v2 import functional as F

from aimv2_eval.data.detection import DetectionSample, DetectionSet
from aimv2_eval.data.threads import one_thread

Output = tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]


def _nearest(n_out: int, n_in: int) -> np.ndarray:
    """Source index of each output pixel of a nearest-neighbour resize (pixel centres, as "nearest-exact")."""
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """(N, 4) float32 tight boxes (x2/y2 exclusive) of (N, H, W) masks; an empty mask gives [0, 0, 0, 0]."""
    n = len(masks)
    out = np.zeros((n, 4), dtype=np.float32)
    if n == 0:
        return out
    rows, cols = np.any(masks, axis=2), np.any(masks, axis=1)
    has = rows.any(axis=1)
    out[:, 0] = cols.argmax(axis=1)
    out[:, 1] = rows.argmax(axis=1)
    out[:, 2] = cols.shape[1] - cols[:, ::-1].argmax(axis=1)
    out[:, 3] = rows.shape[1] - rows[:, ::-1].argmax(axis=1)
    out[~has] = 0
    return out


class _Base:
    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.size, self.mean, self.std = int(size), list(mean), list(std)

    def _finish(self, image: torch.Tensor, boxes: np.ndarray, labels: np.ndarray, masks: np.ndarray | None,
                meta: dict[str, Any]) -> Output:
        """Normalise, pad to size x size (zeros after normalisation, as mmdet's BatchFixedSizePad), pack."""
        h, w = image.shape[-2:]
        x = F.normalize(image.float().div_(255.0), self.mean, self.std)
        out = x.new_zeros(3, self.size, self.size)
        out[:, :h, :w] = x
        target: dict[str, torch.Tensor] = {"boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
                                           "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))}
        if masks is not None:
            padded = np.zeros((len(masks), self.size, self.size), dtype=np.uint8)
            padded[:, :h, :w] = masks
            target["masks"] = torch.from_numpy(padded)
        meta["valid_size"] = (int(h), int(w))
        return out, target, meta


def _resize(sample: DetectionSample, nh: int, nw: int, window: tuple[int, int, int, int] | None = None
            ) -> tuple[torch.Tensor, np.ndarray, np.ndarray | None]:
    """Image (bilinear, antialiased), non-crowd boxes and masks (nearest) resized to (nh, nw); crowd objects removed.
    `window` (y, x, h, w) crops image and masks (masks are sampled in the window only: no full-size copies)."""
    w, h = sample.image.size
    oy, ox, ch, cw = window or (0, 0, nh, nw)
    keep = ~sample.crowd
    image = F.resize(F.pil_to_tensor(sample.image), [nh, nw], antialias=True)[:, oy:oy + ch, ox:ox + cw]
    boxes = sample.boxes[keep] * np.array([nw / w, nh / h, nw / w, nh / h], dtype=np.float32)
    boxes = boxes.clip(0, np.array([nw, nh, nw, nh], dtype=np.float32))  # float error past the edge (mmdet clips too)
    masks = None
    if sample.masks is not None:
        rows, cols = _nearest(nh, h)[oy:oy + ch], _nearest(nw, w)[ox:ox + cw]
        masks = sample.masks[keep][:, rows[:, None], cols[None, :]]
    return image, boxes, masks


class LargeScaleJitter(_Base):
    """ViTDet's large-scale jitter (see the module docstring); `flip_prob` is drawn for every sample either way, so
    the same (seed, epoch, index) gives the same resize and crop whatever `flip_prob` is."""

    def __init__(self, size: int = 1024, scale: tuple[float, float] = (0.1, 2.0), seed: int = 0,
                 mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD,
                 flip_prob: float = 0.5, min_box_size: float = 1e-2) -> None:
        super().__init__(size, mean, std)
        self.scale = (float(scale[0]), float(scale[1]))
        self.seed, self.flip_prob, self.min_box_size = int(seed), flip_prob, min_box_size

    def __call__(self, sample: DetectionSample, epoch: int = 0, index: int = 0) -> Output:
        rng = np.random.default_rng([self.seed, int(epoch), int(index)])
        w, h = sample.image.size
        target = int(self.size * rng.uniform(self.scale[0], self.scale[1]))  # mmcv RandomResize: scale * ratio, then keep_ratio
        f = max(target, 1) / max(h, w)
        nh, nw = max(1, int(h * f + 0.5)), max(1, int(w * f + 0.5))
        ch, cw = min(nh, self.size), min(nw, self.size)
        oy, ox = int(rng.integers(0, nh - ch + 1)), int(rng.integers(0, nw - cw + 1))
        flip = bool(rng.random() < self.flip_prob)

        image, boxes, masks = _resize(sample, nh, nw, (oy, ox, ch, cw))
        labels = sample.labels[~sample.crowd]
        if masks is not None:
            boxes = boxes_from_masks(masks)  # recompute_bbox=True
        else:
            boxes = (boxes - np.array([ox, oy, ox, oy], dtype=np.float32)).clip(0, [cw, ch, cw, ch]).astype(np.float32)
        keep = ((boxes[:, 2] - boxes[:, 0]) > self.min_box_size) & ((boxes[:, 3] - boxes[:, 1]) > self.min_box_size)
        boxes, labels = boxes[keep], labels[keep]
        masks = masks[keep] if masks is not None else None
        if flip:
            image = image.flip(-1)
            boxes = np.stack([cw - boxes[:, 2], boxes[:, 1], cw - boxes[:, 0], boxes[:, 3]], axis=1).reshape(-1, 4)
            masks = masks[:, :, ::-1] if masks is not None else None
        meta = {"image_id": sample.image_id, "scale": f, "orig_size": (h, w), "flip": flip, "offset": (oy, ox)}
        return self._finish(image, boxes, labels, masks, meta)


class ResizePad(_Base):
    """Evaluation: longest side resized to `size` (aspect kept), padded bottom/right to `size` x `size`."""

    def __init__(self, size: int = 1024, mean: Sequence[float] = OPENAI_CLIP_MEAN,
                 std: Sequence[float] = OPENAI_CLIP_STD) -> None:
        super().__init__(size, mean, std)

    def __call__(self, sample: DetectionSample, epoch: int = 0, index: int = 0) -> Output:
        w, h = sample.image.size
        f = self.size / max(h, w)
        nh, nw = min(self.size, max(1, int(h * f + 0.5))), min(self.size, max(1, int(w * f + 0.5)))
        image, boxes, masks = _resize(sample, nh, nw)
        meta = {"image_id": sample.image_id, "scale": f, "orig_size": (h, w), "flip": False, "offset": (0, 0)}
        return self._finish(image, boxes, sample.labels[~sample.crowd], masks, meta)


def unmap_predictions(boxes: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray | None,
                      meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions on a `ResizePad` input -> original pixels: boxes (N, 4) float32 xyxy clipped to the image, masks
    (N, size, size) or (N, 1, size, size) probabilities -> (N, H, W) uint8 (valid region resized bilinearly, >= 0.5)."""
    h, w = meta["orig_size"]
    vh, vw = meta["valid_size"]
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    b = b / b.new_tensor([vw / w, vh / h, vw / w, vh / h])  # per axis: the resize rounded each side on its own
    b = torch.stack([b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)], dim=1)
    if masks is None:
        return b.numpy(), None
    m = torch.as_tensor(masks, dtype=torch.float32)
    m = m.reshape(-1, 1, *m.shape[-2:])[..., :vh, :vw]
    if len(m) == 0:
        return b.numpy(), np.zeros((0, h, w), dtype=np.uint8)
    m = nnf.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    return b.numpy(), (m >= 0.5).to(torch.uint8).numpy()


class DetectionTransform(Protocol):
    def __call__(self, sample: DetectionSample, epoch: int = 0, index: int = 0) -> Output: ...


class TransformedDetection(torch.utils.data.Dataset):
    """A DetectionSet (optionally some of its images) through a transform; set `.epoch` before each epoch. The
    index handed to the transform is the image's position in the set, so its jitter does not depend on `indices`."""

    def __init__(self, dataset: DetectionSet, transform: DetectionTransform, indices: Sequence[int] | None = None) -> None:
        self.dataset, self.transform = dataset, transform
        self.indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Output:
        i = self.indices[k]
        with one_thread():
            return self.transform(self.dataset[i], self.epoch, i)


def collate_detection(batch: list[Output]) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]], list[dict[str, Any]]]:
    """(images (B, 3, size, size), targets, metas)."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch], [b[2] for b in batch]
