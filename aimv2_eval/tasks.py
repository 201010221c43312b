"""Declarative tasks: one YAML per task in `tasks/` (and any --tasks-dir / $AIMV2_EVAL_TASKS folder).

A task file holds: version, plugin, description, data, metric {main, report}, protocol, paper {tables, benchmark,
metric} and `embedded` (runs offline on data that ships with the project or its dependencies). `include: FILE`
merges a shared file first (the task's own keys win, nested dicts merged), so the 14 benchmarks share one copy of
Table A2. Files starting with `_` are includes, not tasks. A task in a later folder replaces one of the same name
in an earlier folder (yours override the built-in ones).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aimv2_eval import validate as v
from aimv2_eval.config import deep_merge
from aimv2_eval.errors import UserError
from aimv2_eval.plugins.registry import PLUGINS
from aimv2_eval.registry import Registry

# The repository's tasks/ ships inside the package as aimv2_eval/builtin_tasks (a link in the source tree, copied
# into wheels), so that a non-editable install finds its tasks without --tasks-dir.
BUILTIN_DIR = (Path(__file__).parent / "builtin_tasks").resolve()
TASKS_ENV = "AIMV2_EVAL_TASKS"
REQUIRED = ("version", "plugin", "data", "metric", "protocol")
SPLITS = ("train", "test")  # the splits a task's data block defines (aimv2_eval.data.sources.open_split)
# Data keys that describe the data instead of choosing it: left out of the protocol hash, so that correcting one
# (e.g. a split size) does not turn finished cells into new ones.
DATA_DESCRIPTIONS = ("expected_sizes",)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    version: int
    plugin: str
    data: dict[str, Any]
    metric: dict[str, Any]
    protocol: dict[str, Any]
    description: str = ""
    paper: dict[str, Any] | None = None
    embedded: bool = False
    path: Path | None = field(default=None, compare=False)

    @property
    def num_classes(self) -> int | None:
        n = self.data.get("num_classes")
        return int(n) if n is not None else None

    @property
    def hashed_data(self) -> dict[str, Any]:
        """The data block as the protocol hash sees it: without the descriptive keys (DATA_DESCRIPTIONS)."""
        return {k: v for k, v in self.data.items() if k not in DATA_DESCRIPTIONS}

    def to_dict(self) -> dict[str, Any]:
        """The resolved task (includes merged) as recorded with every result."""
        return {
            "name": self.name,
            "version": self.version,
            "plugin": self.plugin,
            "description": self.description,
            "data": copy.deepcopy(self.data),
            "metric": copy.deepcopy(self.metric),
            "protocol": copy.deepcopy(self.protocol),
            "paper": copy.deepcopy(self.paper),
            "embedded": self.embedded,
            "path": str(self.path) if self.path else None,
        }


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise UserError(f"{path}: include cycle ({' -> '.join(str(p) for p in (*seen, path))}); remove one include")
    by = f" (included by {seen[-1]})" if seen else ""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{seen[-1] if seen else path}: included file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{path}{by} is a folder, not a task file; include a .yaml file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}{by} ({type(exc).__name__}: {exc}); check the file") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}); fix the file") from None
    if not isinstance(raw, dict):
        got = "nothing (the file is empty)" if raw is None else f"a {type(raw).__name__}"
        raise UserError(f"{path}{by} must hold a mapping of task fields (key: value lines), got {got}")
    include = raw.pop("include", None)
    if include is not None:
        # a path relative to the including file; a list or a number here would be joined to a path and crash
        if not isinstance(include, str) or not include.strip():
            raise UserError(f"{path}: include must be one file name (a string, e.g. include: _probe_table_a2.yaml), "
                            f"got {include!r}")
        raw = deep_merge(_read_yaml((path.parent / include).resolve(), (*seen, path)), raw)
    return raw


def parse_task(path: Path) -> TaskSpec:
    """Read and validate one task file: its structure and the types of the common fields (each plugin checks its
    own protocol in `resolve`, before any work)."""
    path = Path(path)
    raw = _read_yaml(path.resolve())
    name = raw.get("name", path.stem)
    if name != path.stem:
        raise UserError(f"{path}: name {name!r} differs from the file name; rename the file to {name}.yaml")
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise UserError(f"{path}: missing field(s) {', '.join(missing)}; see tasks/imagenet_probe.yaml for the layout")
    if not isinstance(raw["plugin"], str):
        raise UserError(f"{path}: plugin must be a plugin name (`aimv2-eval list plugins`), got {raw['plugin']!r}")
    if raw["plugin"] not in PLUGINS:
        raise UserError(f"{path}: {PLUGINS.unknown_message(raw['plugin'])}")
    for key in ("data", "metric", "protocol"):
        if not isinstance(raw[key], dict):
            raise UserError(f"{path}: field {key!r} must be a mapping")
    if "main" not in raw["metric"]:
        raise UserError(f"{path}: metric needs a `main` entry (e.g. main: top1)")
    unknown = set(raw) - {*REQUIRED, "name", "description", "paper", "embedded"}
    if unknown:
        raise UserError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}; check the spelling")
    _check_fields(path, raw)
    return TaskSpec(
        name=name,
        version=raw["version"],
        plugin=PLUGINS.canonical(raw["plugin"]),
        data=raw["data"],
        metric=raw["metric"],
        protocol=raw["protocol"],
        description=str(raw.get("description") or "").strip(),
        paper=raw.get("paper"),
        embedded=bool(raw.get("embedded", False)),
        path=path,
    )


def _check_fields(path: Path, raw: dict[str, Any]) -> None:
    """Types of the fields every task has; each plugin's `resolve` checks its own protocol."""
    v.positive_int(raw["version"], f"{path}: version")
    for key, check in (("description", v.text), ("embedded", v.boolean), ("paper", v.mapping)):
        if raw.get(key) is not None:  # null: the default ("", false, no paper cell)
            check(raw[key], f"{path}: {key}")
    metric = raw["metric"]
    v.known_keys(metric, ("main", "report"), f"{path}: metric")
    v.string(metric["main"], f"{path}: metric.main")
    if metric.get("report") is not None:
        v.string_list(metric["report"], f"{path}: metric.report")
    if "num_classes" in raw["data"]:  # TaskSpec.num_classes sizes the classifier from it
        v.positive_int(raw["data"]["num_classes"], f"{path}: data.num_classes")
    if raw["data"].get("expected_sizes") is not None:  # images per split; a different count warns at load
        v.counts(raw["data"]["expected_sizes"], f"{path}: data.expected_sizes", SPLITS)


def task_dirs(extra: list[str | Path] | tuple[str | Path, ...] = ()) -> list[Path]:
    """Built-in folder, then $AIMV2_EVAL_TASKS folders, then --tasks-dir folders (later ones win)."""
    dirs = [BUILTIN_DIR]
    env = os.environ.get(TASKS_ENV, "")
    dirs += [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    for d in extra:
        d = Path(d).expanduser()
        if not d.is_dir():
            raise UserError(f"--tasks-dir {d} is not a folder")
        dirs.append(d)
    return dirs


def task_files(extra: list[str | Path] | tuple[str | Path, ...] = ()) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in task_dirs(extra):
        if d.is_dir():
            # one level of subfolders too (tasks/llava/, tasks/cambrian/: families of generated task files)
            for path in sorted(d.glob("*.y*ml")) + sorted(d.glob("*/*.y*ml")):
                if path.suffix in (".yaml", ".yml") and not path.name.startswith("_"):
                    found[path.stem] = path
    return found


def task_registry(extra: list[str | Path] | tuple[str | Path, ...] = ()) -> Registry[Path]:
    """Task name -> file, for listing and did-you-mean; files are parsed only when a task is used."""
    reg: Registry[Path] = Registry("task")
    for name, path in task_files(extra).items():
        reg.register(name, path)
    return reg


def load_task(name: str, extra: list[str | Path] | tuple[str | Path, ...] = ()) -> TaskSpec:
    """A task by name, or a path to a task file; unknown names fail with the closest matches."""
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml") and as_path.is_file():
        return parse_task(as_path)
    return parse_task(task_registry(extra).get(name))


def task_rows(pattern: str | None = None, extra: list[str | Path] | tuple[str | Path, ...] = ()) -> list[dict[str, Any]]:
    """Rows for `aimv2-eval list tasks [PATTERN]`: name, plugin, classes, data, paper cell, embedded."""
    reg = task_registry(extra)
    rows = []
    for name in reg.list(pattern):
        try:
            task = parse_task(reg.get(name))
        except UserError as exc:  # one broken file must not hide the others
            rows.append({"name": name, "plugin": "?", "classes": None, "data": "", "metric": "", "paper": "",
                         "embedded": None, "description": f"invalid: {exc}"})
            continue
        data = task.data
        if "source" in data:
            where = data["source"]
        else:
            where = " | ".join(x for x in (data.get("hf", {}).get("id"), "imagefolder" if "imagefolder" in data else None) if x)
        paper = task.paper or {}
        rows.append({
            "name": name,
            "plugin": task.plugin,
            "classes": task.num_classes,
            "data": where,
            "metric": task.metric["main"],
            "paper": f"Table {'/'.join(map(str, paper.get('tables', [])))} {paper.get('benchmark', '')}".strip() if paper else "",
            "embedded": task.embedded,
            "description": task.description if len(task.description) <= 60 else task.description[:57] + "...",
        })
    return rows
