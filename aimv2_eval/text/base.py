"""The text-encoder contract: every text tower looks the same to LiT, grounding and LLaVA (../DESIGN.md, "Text
encoders and language models").

A `TextEncoder` turns captions into a batch of tensors (`tokenize`, so ids are built once and moved to the device
with the batch) and a batch into a `TextOutput`: per-token features, a mask of the real tokens and one pooled vector.
Family modules (aimv2, hf, open_clip, siglip) register `TextEncoderSpec`s in `TEXT_ENCODERS` and, for open-ended names
such as `hf:<hub id or folder>`, a resolver in `RESOLVERS`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from aimv2_eval.registry import Registry

Batch = dict[str, torch.Tensor]


@dataclass
class TextOutput:
    tokens: torch.Tensor  # (B, L, D_tokens) per-token features after the final norm
    mask: torch.Tensor  # (B, L) bool, True = a real token (padding after the end of the caption is False)
    pooled: torch.Tensor  # (B, D) the tower's sentence vector (D = the encoder's `width`)


@dataclass(frozen=True)
class TextMeta:
    name: str
    family: str
    width: int  # of the pooled vector
    token_width: int  # of the per-token features (open_clip projects only the pooled vector)
    context_length: int  # most tokens a caption keeps


class TextEncoder(nn.Module, abc.ABC):
    """A text tower. Subclasses set `meta` and `weights_id` and implement `tokenize` and `forward`."""

    meta: TextMeta
    weights_id: str = "random"  # sha256 of the weights file it was loaded from, or "random"

    @property
    def width(self) -> int:
        return self.meta.width

    @abc.abstractmethod
    def tokenize(self, texts: list[str]) -> Batch:
        """Captions -> the batch `forward` takes (CPU tensors)."""

    @abc.abstractmethod
    def forward(self, batch: Batch) -> TextOutput: ...

    def encode(self, batch: Batch) -> torch.Tensor:
        """Only the pooled vector; families override it where that is cheaper than the full forward."""
        return self(batch).pooled

    def describe(self) -> dict[str, Any]:
        """What a record says about the text model."""
        return {"name": self.meta.name, "family": self.meta.family, "width": self.meta.width,
                "weights_id": self.weights_id}


def first_eot(ids: torch.Tensor, eot_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of each row's first end-of-text id, 0 where a row has none (as Apple's ExtractEOS); mask of the tokens
    up to and including it, all True where a row has none)."""
    is_eot = ids == eot_id
    idx = is_eot.int().argmax(dim=1)
    mask = torch.arange(ids.shape[1], device=ids.device)[None] <= idx[:, None]
    return idx, mask | ~is_eot.any(dim=1, keepdim=True)


@dataclass(frozen=True)
class TextEncoderSpec:
    """A registry entry. build(pretrained, corpus) -> TextEncoder; pretrained=False gives random weights and never
    downloads; `corpus` (training captions) is only used by towers that size their vocabulary to it."""

    name: str
    family: str
    build: Callable[..., TextEncoder]
    source: str = ""  # hub id, package or path where the weights come from
    aliases: tuple[str, ...] = ()
    description: str = ""


TEXT_ENCODERS: Registry[TextEncoderSpec] = Registry("text encoder")

Resolver = Callable[[str], TextEncoderSpec | None]
RESOLVERS: list[Resolver] = []
"""Open-ended names (`hf:<id or folder>`, `open_clip:<model>[:<tag>]`, `siglip:<vocabulary>`): each resolver returns
a spec for a name it understands, else None."""


def register(spec: TextEncoderSpec) -> TextEncoderSpec:
    return TEXT_ENCODERS.register(spec.name, spec, spec.aliases)


def register_resolver(resolver: Resolver) -> Resolver:
    RESOLVERS.append(resolver)
    return resolver
