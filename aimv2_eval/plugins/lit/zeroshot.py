"""Zero-shot classification (CLIP's recipe): each class's prompt embeddings, L2-normalised, averaged and normalised
again, form one classifier column; an image goes to the class of highest cosine similarity. Top-1 and top-5.

ImageNet's 1,000 class names and the 80 OpenAI prompt templates come from open_clip's wheel
(`open_clip.zero_shot_metadata`), so nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from aimv2_eval.errors import UserError
from aimv2_eval.metrics import topk_correct
from aimv2_eval.plugins.lit.model import LiT

Template = str | Callable[[str], str]
OPENCLIP_SETS = {
    "openai_imagenet": "OPENAI_IMAGENET_TEMPLATES",  # the 80 templates of CLIP's ImageNet zero-shot evaluation
    "simple_imagenet": "SIMPLE_IMAGENET_TEMPLATES",
}


def imagenet_classnames() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def resolve_templates(spec: str | Sequence[str]) -> list[Template]:
    """A named open_clip set ('openai_imagenet', 'simple_imagenet') or a list of strings with `{}` or `{c}`."""
    if isinstance(spec, str):
        if spec not in OPENCLIP_SETS:
            raise UserError(f"unknown prompt template set {spec!r}; use one of {', '.join(OPENCLIP_SETS)} or a list")
        from open_clip import zero_shot_metadata

        return list(getattr(zero_shot_metadata, OPENCLIP_SETS[spec]))
    out: list[Template] = []
    for t in spec:
        if "{}" not in t and "{c}" not in t:
            raise UserError(f"prompt template {t!r} has no '{{}}' or '{{c}}' where the class name goes")
        out.append(str(t))
    if not out:
        raise UserError("zero-shot classification needs at least one prompt template")
    return out


def resolve_classnames(spec: str | Sequence[str]) -> list[str]:
    if isinstance(spec, str):
        if spec != "imagenet":
            raise UserError(f"unknown class-name set {spec!r}; use 'imagenet' or a list of names")
        return imagenet_classnames()
    return [str(c) for c in spec]


def fill(template: Template, name: str) -> str:
    if callable(template):
        return template(name)
    return template.replace("{c}", name).replace("{}", name)


def prompts(classnames: Sequence[str], templates: Sequence[Template]) -> list[str]:
    """Class-major: class 0 with every template, then class 1, ..."""
    return [fill(t, c) for c in classnames for t in templates]


@torch.no_grad()
def build_classifier(model: LiT, classnames: Sequence[str], templates: Sequence[Template],
                     device: torch.device | str = "cpu", batch_size: int = 256) -> torch.Tensor:
    """(projection_dim, num_classes) unit-norm class embeddings."""
    texts = prompts(classnames, templates)
    model.eval()
    chunks = []
    for i in range(0, len(texts), batch_size):
        batch = model.text_tower.tokenize(texts[i : i + batch_size])
        batch = {k: v.to(device) for k, v in batch.items()}
        chunks.append(F.normalize(model.embed_text(batch).float(), dim=-1))
    per_prompt = torch.cat(chunks).reshape(len(classnames), len(templates), -1)
    return F.normalize(per_prompt.mean(1), dim=-1).t()


def zero_shot_logits(image_embeds: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    return F.normalize(image_embeds.float(), dim=-1) @ classifier


def accuracy_counts(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """Correct counts for each k (summable across batches and ranks)."""
    return topk_correct(logits, targets.to(logits.device), ks)
