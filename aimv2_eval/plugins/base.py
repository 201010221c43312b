"""The task-plugin protocol: a plugin turns (backbone, task) into metrics, the way one paper table does.

A plugin never imports another plugin and never special-cases a backbone family (../DESIGN.md).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aimv2_eval.backbones.base import Backbone, BackboneSpec
    from aimv2_eval.launch.distributed import DistContext
    from aimv2_eval.tasks import TaskSpec


@dataclass
class RunOptions:
    """What the command line says about one run; None means "as the task's protocol says"."""

    epochs: int | None = None
    batch_size: int | None = None
    limit: int | None = None  # at most this many samples per split
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast of the frozen backbone)
    seed: int = 0
    feature_cache: Path | None = None  # cache frozen tokens here (no augmentation)
    resume: bool = False
    checkpoint: Path | None = None  # where the plugin keeps its resumable state
    data_root: Path | None = None
    workers: int = 0
    progress: bool = True
    on_epoch_end: Callable[[int], None] | None = field(default=None, repr=False)  # test hook: called after saving


@dataclass
class PluginResult:
    metrics: dict[str, float]
    main_metric: str
    selection: dict[str, Any]  # the rule, the split it used, and every candidate's scores
    throughput: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)


class Plugin(abc.ABC):
    name: str
    summary: str

    @abc.abstractmethod
    def resolve(self, task: TaskSpec, options: RunOptions, backbone: BackboneSpec) -> dict[str, Any]:
        """The protocol exactly as it will run (task protocol + command-line overrides + backbone-dependent
        values such as the input size). It is hashed into the cell id, so it holds only what changes results."""

    @abc.abstractmethod
    def load_data(self, task: TaskSpec, protocol: dict[str, Any], options: RunOptions) -> Any:
        """Open the data before the backbone is built, so that missing data fails fast."""

    @abc.abstractmethod
    def run(
        self,
        backbone: Backbone,
        task: TaskSpec,
        protocol: dict[str, Any],
        data: Any,
        options: RunOptions,
        ctx: DistContext,
    ) -> PluginResult:
        """Evaluate; every rank calls it, rank 0's result is recorded."""
