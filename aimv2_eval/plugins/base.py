"""The task-plugin protocol: a plugin turns (backbone, task) into metrics, the way one paper table does.

A plugin never imports another plugin and never special-cases a backbone family (../DESIGN.md).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aimv2_eval import validate

if TYPE_CHECKING:
    from aimv2_eval.backbones.base import Backbone, BackboneMeta
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
    output_dir: Path | None = None  # where the plugin writes predictions (published with the record)
    checkpoint_minutes: float | None = 10.0  # also checkpoint inside an epoch this often (None: at epoch ends only)


@dataclass
class PluginResult:
    metrics: dict[str, float]
    main_metric: str
    selection: dict[str, Any]  # the rule, the split it used, and every candidate's scores
    throughput: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    # other models the cell used besides the backbone (text encoder, language model): role, name, weights_id
    models: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)  # key -> file name inside options.output_dir


class Plugin(abc.ABC):
    name: str
    summary: str

    @abc.abstractmethod
    def resolve(self, task: TaskSpec, options: RunOptions, backbone: BackboneMeta) -> dict[str, Any]:
        """The protocol exactly as it will run (task protocol + command-line overrides + backbone-dependent
        values such as the input size, from the backbone's full metadata). It is hashed into the cell id, so it
        holds only what changes results, including the name and weights of every other model the cell uses."""

    def metric_names(self, task: TaskSpec, protocol: dict[str, Any]) -> set[str] | None:
        """The names `run` puts in `PluginResult.metrics` for this task and resolved protocol; None where they are
        not known before the data is open (then metric.main is not checked before the run)."""
        return None

    def check_metrics(self, task: TaskSpec, protocol: dict[str, Any]) -> None:
        """metric.main and metric.report must name metrics this plugin produces: checked before any work, so that
        a typo does not surface after the whole run has trained."""
        names = self.metric_names(task, protocol)
        if names is not None:
            validate.metric_names(task, names, self.name)

    def backbone_options(self, protocol: dict[str, Any]) -> dict[str, Any]:
        """Build options of the backbone (`create_backbone` keywords: trainable, drop_path_rate,
        grad_checkpointing); frozen by default."""
        return {}

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
