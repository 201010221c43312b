"""An AIMv2 checkpoint on disk as a backbone: `file:<path>`, or just a path that exists.

The path is a directory (config.json + model.safetensors, as the hub repos and `save_encoder` lay it out) or a
single weights file, in any key scheme the core reads (Apple's, transformers', timm's).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from aimv2_eval.backbones.aimv2 import AIMv2Backbone, backbone_from_source, check_source, random_from_source
from aimv2_eval.backbones.base import BackboneSpec, register_resolver
from aimv2_eval.errors import UserError


def _build(name: str, path: Path, pretrained: bool = True, weights: str | None = None) -> AIMv2Backbone:
    source = Path(weights).expanduser() if weights else path
    if not source.exists():
        raise UserError(f"checkpoint not found: {source}; pass a directory (config.json + model.safetensors) or a weights file")
    return backbone_from_source(name, source) if pretrained else random_from_source(name, source)


@register_resolver
def resolve_checkpoint(name: str) -> BackboneSpec | None:
    """`file:<path>`, or a path: an AIMv2 checkpoint folder (config.json + weights) or weights file."""
    explicit = name.startswith("file:")
    path = Path(name.removeprefix("file:")).expanduser()
    if not explicit and not path.exists():
        return None
    return BackboneSpec(
        name=name,
        family="aimv2",
        resolution=0,  # known once the checkpoint is read
        build=partial(_build, name, path),
        source=str(path),
        weights_present=path.exists,
        description="AIMv2 checkpoint on disk",
        check_weights=check_source,
    )
