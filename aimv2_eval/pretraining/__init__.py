"""AIMv2 pretraining from a YAML recipe: recipe loading (`recipe`), samples (`samples`), the run (`pipeline`) and
its export (`export`). Library logic for `aimv2-eval pretrain`, the benchmarks and the tests; the loop itself is
`aimv2_eval.core.pretrain`."""

from aimv2_eval.pretraining.export import finish_export
from aimv2_eval.pretraining.pipeline import run
from aimv2_eval.pretraining.recipe import (
    CONFIG_DIR,
    DEFAULTS,
    build_model,
    build_tokenizer_for,
    load_config,
    peak_lr,
    resolve_config_path,
)
from aimv2_eval.pretraining.samples import Augment, Sampler, random_resized_crop_box

__all__ = [
    "CONFIG_DIR",
    "DEFAULTS",
    "Augment",
    "Sampler",
    "build_model",
    "build_tokenizer_for",
    "finish_export",
    "load_config",
    "peak_lr",
    "random_resized_crop_box",
    "resolve_config_path",
    "run",
]
