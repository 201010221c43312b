"""Named AIMv2 sizes: the released checkpoints (Table 1) and tiny ones sized for 2 CPU cores."""

from __future__ import annotations

from aimv2_eval.core.decoder import DecoderConfig
from aimv2_eval.core.encoder import EncoderConfig
from aimv2_eval.core.model import AIMv2Config

# Table 1 (../shared/paper/tables/table1_model_family.csv): d_enc, L_enc; heads and MLP width as in the released
# checkpoints (heads 8/12/16/24 = head dim 128; MLP 2816/4096/5632/8192 = swiglu_hidden_dim(d_enc)).
_RELEASED = {
    "large": (1024, 24, 8),
    "huge": (1536, 24, 12),
    "1b": (2048, 24, 16),
    "3b": (3072, 24, 24),
}
# Tiny sizes for CPU work: same architecture, patch 14, 112px native grid (8x8 patches).
_TINY = {
    "tiny": (192, 6, 3),
    "micro": (96, 4, 2),
}
TINY_DECODER = DecoderConfig(width=192, depth=2, num_heads=3)
DEFAULT_DECODER = DecoderConfig()  # Table 1: width 1024, depth 12 for every variant

HEADS_BY_WIDTH = {d: h for d, _, h in _RELEASED.values()}


def encoder_config(size: str, image_size: int | None = None, native: bool = False) -> EncoderConfig:
    """`size` in large/huge/1b/3b/tiny/micro; `native` selects the sin-cos position embedding."""
    key = size.lower()
    table = {**_RELEASED, **_TINY}
    if key not in table:
        raise KeyError(f"unknown AIMv2 size {size!r}; known: {', '.join(table)}")
    dim, depth, heads = table[key]
    default_res = 224 if key in _RELEASED else 112
    return EncoderConfig(
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        image_size=image_size or default_res,
        pos_embed="sincos" if native else "learned",
    )


def model_config(size: str, **overrides) -> AIMv2Config:
    """Pretraining config (encoder + decoder) for a size; keyword overrides go to AIMv2Config."""
    dec = TINY_DECODER if size.lower() in _TINY else DEFAULT_DECODER
    return AIMv2Config(encoder=encoder_config(size), decoder=dec, **overrides)


SIZES = tuple(_RELEASED) + tuple(_TINY)
