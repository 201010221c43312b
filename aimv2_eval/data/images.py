"""Decoding images to RGB: one place for every data source (labelled splits, image-caption pairs, `encode`).

Every encoder takes 3-channel 8-bit input, but files come in any PIL mode: palette, greyscale with or without
alpha, 16-bit or float greyscale (medical and satellite scans), CMYK JPEGs. `to_rgb` converts each of them the
same way everywhere; an image PIL cannot decode or convert is an `ImageError` (a `UserError`) naming it, also
when it is raised inside a DataLoader worker process. Images larger than PIL's decompression-bomb limit
(`Image.MAX_IMAGE_PIXELS`) are refused before they are decoded.
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from aimv2_eval.errors import UserError, first_line

# Greyscale wider than 8 bits: a plain convert would clip at 255, so these are rescaled to their own range.
WIDE_GREY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# What PIL raises for a file it cannot decode: truncated, corrupt, not an image, a bomb (its warning made an error).
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error,
                 Image.DecompressionBombError, Image.DecompressionBombWarning)


class ImageError(UserError):
    """One image that cannot be decoded or converted; the message names it and says what to do (one line even when
    a DataLoader worker raised it: `UserError` keeps the worker's message only)."""


def _rescale_grey(img: Image.Image) -> Image.Image:
    a = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.round(a).astype(np.uint8), "L")


def to_rgb(img: Image.Image | np.ndarray, where: str = "") -> Image.Image:
    """Any PIL image (or uint8 array) as RGB.

    Wide greyscale is rescaled to 8 bits, transparency (alpha, or a palette's transparent colour) is composited on
    white, palette / CMYK / YCbCr / LAB / 1-bit are converted by PIL. `where` names the image in the error.
    """
    what = f"image {where}" if where else "image"
    if isinstance(img, np.ndarray):
        arr = img
        try:
            img = Image.fromarray(arr)
        except (TypeError, ValueError) as exc:
            raise ImageError(f"{what}: an array of shape {arr.shape} and dtype {arr.dtype} is not an image "
                            f"({first_line(exc)}); store it as uint8 HxW or HxWx3") from None
    if img.mode == "RGB":
        return img
    mode = img.mode
    try:
        if mode in WIDE_GREY_MODES:
            img = _rescale_grey(img)
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        if img.mode in ALPHA_MODES:
            rgba = img.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(f"cannot convert {what} from mode {mode} to RGB ({first_line(exc)}); "
                        "re-save it as RGB") from None


def open_image(src: str | Path | bytes, where: str | None = None) -> Image.Image:
    """Decode an image file (or its bytes) fully and return it as RGB; the file is closed on return."""
    where = where if where is not None else str(src) if not isinstance(src, bytes) else "(bytes)"
    try:
        with warnings.catch_warnings():
            # PIL only warns between one and two times its limit, then decodes gigabytes: refuse those too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as img:
                img.load()
                return to_rgb(img, where)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image {where} is too large to decode safely ({first_line(exc).rstrip('.')}); "
                         "shrink or remove it, or raise PIL.Image.MAX_IMAGE_PIXELS if it is genuine") from None
    except DECODE_ERRORS as exc:
        raise ImageError(f"cannot read image {where} ({type(exc).__name__}: {first_line(exc)}); "
                         "remove or replace the file") from None
