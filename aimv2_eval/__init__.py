"""aimv2-eval: evaluate large vision encoders the way the AIMv2 paper does.

The Python API (the README's "Python API" section). Each function imports what it needs when called, so that
`import aimv2_eval` stays light (no torch until a backbone or a run needs it):

    create_backbone(name, pretrained=True, weights=None, ...) -> Backbone
    list_backbones(pattern=None) -> list of registered backbone names
    load_task(name_or_yaml) -> TaskSpec
    evaluate(backbone, task, **options) -> record dict   (exactly `aimv2-eval run`; options are its flags)
    load_records(folder="records") -> pandas.DataFrame    (one row per record)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["create_backbone", "evaluate", "list_backbones", "load_records", "load_task"]


def create_backbone(name: str, pretrained: bool = True, weights: str | None = None, **kwargs: Any):
    """A registry backbone, frozen by default (`aimv2_eval.backbones.create_backbone`)."""
    from aimv2_eval.backbones import create_backbone as create

    return create(name, pretrained=pretrained, weights=weights, **kwargs)


def list_backbones(pattern: str | None = None) -> list[str]:
    """Names of the registered backbones matching a glob pattern (as `aimv2-eval list backbones PATTERN`)."""
    from aimv2_eval.backbones import list_backbones as specs

    return [spec.name for spec in specs(pattern)]


def load_task(name: str, tasks_dir: list[str | Path] | tuple[str | Path, ...] = ()):
    """A task by name (`aimv2-eval list tasks`) or a task YAML path."""
    from aimv2_eval.tasks import load_task as load

    return load(name, tasks_dir)


def evaluate(backbone: str, task: str, **options: Any) -> dict[str, Any]:
    """Run one cell and return its record, through `aimv2-eval run` itself (same cell id, same record file).

    Options are run's flags with underscores: evaluate("aimv2-tiny", "digits_probe", epochs=1, limit=60,
    out="records", progress=False). True switches a flag on; feature_cache=False and progress=False select
    --no-feature-cache and --no-progress. A cell whose record exists is read back, not rerun (overwrite=True reruns).
    """
    import json

    from aimv2_eval.commands import run

    args = run.parse_run_args(["--backbone", backbone, "--task", task, *_flags(options)])
    path = run.plan_cell(args).path
    run.run_cell(args)
    return json.loads(path.read_text())


def _flags(options: dict[str, Any]) -> list[str]:
    """Keyword options as run's command-line flags."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if key == "progress":  # run has only the negative flag
            argv += [] if value else ["--no-progress"]
        elif value is False and key == "feature_cache":
            argv.append("--no-feature-cache")
        elif value is True:
            argv.append(flag)
        elif isinstance(value, list | tuple):
            for item in value:
                argv += [flag, str(item)]
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    return argv


def load_records(folder: str | Path = "records"):
    """Every record under a folder as a pandas DataFrame, one row per record (`report.store.to_frame`)."""
    from aimv2_eval.report.store import load_records as load
    from aimv2_eval.report.store import to_frame

    return to_frame(load(Path(folder)))
