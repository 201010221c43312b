"""The grid: backbones x tasks x seeds (+ run options and per-cell resources), from the command line or a YAML file.

A sweep file (`sweeps/*.yaml`):

    name: table3                      # the sweep's name (default: the file's stem)
    seeds: [0]                        # default seeds of every group
    options: {device: cuda}           # `run` flags for every cell (keys of RUN_FLAGS)
    resources: {gpus_per_cell: 1}     # what one cell needs from a scheduler (keys of RESOURCES)
    grid:                             # groups; a group's own seeds / options / resources override the defaults
      - backbones: [aimv2-large-patch14-224, "siglip-*"]     # names, aliases or glob patterns on the registry
        tasks: ["*_probe"]

Every pattern must match something and every name must be registered: a bad grid fails before anything runs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aimv2_eval.errors import UserError

# sweep option -> `run` flag; None values are left out, True booleans become bare flags
RUN_FLAGS = {
    "epochs": "--epochs", "batch_size": "--batch-size", "limit": "--limit", "device": "--device",
    "precision": "--precision", "weights": "--weights", "random_init": "--random-init",
    "feature_cache": "--feature-cache", "data_root": "--data-root", "workers": "--workers",
}
# what a cell needs from a scheduler; the defaults fit one probe cell
RESOURCES = {"gpus_per_cell": 1, "cpus_per_cell": 8, "mem_gb": 64, "time_min": 240}
_GROUP_KEYS = {"backbones", "tasks", "seeds", "options", "resources"}
MAX_SEEDS = 1000  # a range wider than this is a typo (0-10000000 would plan millions of cells)
_FILE_KEYS = {"name", "description", "seeds", "options", "resources", "grid", "tasks_dir"}


@dataclass(frozen=True)
class Cell:
    backbone: str
    task: str
    seed: int
    options: tuple[tuple[str, Any], ...] = ()
    resources: tuple[tuple[str, Any], ...] = ()

    def resource(self, key: str) -> Any:
        return dict(self.resources).get(key, RESOURCES[key])

    def run_argv(self, out: Path, tasks_dirs: list[Path] = ()) -> list[str]:
        """The `aimv2-eval run` arguments of this cell. Always --resume: a cell that was cut continues, never
        starts over."""
        argv = ["--backbone", self.backbone, "--task", self.task, "--seed", str(self.seed), "--out", str(out),
                "--resume", "--no-progress"]
        for key, value in self.options:
            if value is None or value is False:
                continue
            argv += [RUN_FLAGS[key]] if value is True else [RUN_FLAGS[key], str(value)]
        for d in tasks_dirs:
            argv += ["--tasks-dir", str(d)]
        return argv


@dataclass
class Grid:
    name: str
    cells: list[Cell]
    tasks_dirs: list[Path] = field(default_factory=list)


def parse_seeds(text: str | int | list) -> list[int]:
    """'0,1,2', '0-4', 3 or [0, 1]."""
    items = text if isinstance(text, list) else str(text).split(",")
    seeds: list[int] = []
    try:
        for item in items:
            if isinstance(item, bool | float):  # YAML true / 0.5: int() would take them
                raise ValueError
            item = str(item).strip()
            if "-" in item[1:]:
                lo, hi = item.split("-", 1) if not item.startswith("-") else (item, "")
                lo, hi = int(lo), int(hi)
                if hi < lo or hi - lo >= MAX_SEEDS:
                    raise UserError(f"seeds {text!r}: a range runs from low to high over at most {MAX_SEEDS} seeds, "
                                    "e.g. 0-4")
                seeds += list(range(lo, hi + 1))
            elif item:
                seeds.append(int(item))
    except ValueError:
        raise UserError(f"seeds {text!r}: give integers, e.g. 0,1,2 or 0-4") from None
    if not seeds:
        raise UserError("no seeds given; e.g. --seeds 0,1,2")
    if min(seeds) < 0:  # numpy refuses negative seeds, and a record named ...-seed-1 reads as seed 1
        raise UserError(f"seeds {text!r}: seeds must be >= 0")
    return list(dict.fromkeys(seeds))


def _names(value: Any, what: str, empty_ok: bool = False) -> list[str]:
    if isinstance(value, str):
        names = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        names = [v.strip() for v in value if v.strip()]
    else:
        raise UserError(f"{what} must be a list of names or patterns, got {value!r}")
    if not names and not empty_ok:  # an empty list would make a sweep of no cells that reports success
        raise UserError(f"{what} is empty; name at least one")
    return names


def _is_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


def resolve_backbones(patterns: list[str]) -> list[str]:
    from aimv2_eval.backbones import get_spec, list_backbones

    out: list[str] = []
    for pat in patterns:
        if _is_glob(pat):
            hits = [s.name for s in list_backbones(pat)]
            if not hits:
                raise UserError(f"backbone pattern {pat!r} matches no registered backbone (`aimv2-eval list backbones`)")
            out += hits
        else:
            out.append(get_spec(pat).name)  # unknown names fail here, with the closest matches
    return list(dict.fromkeys(out))


def resolve_tasks(patterns: list[str], tasks_dirs: list[Path]) -> list[str]:
    from aimv2_eval.tasks import task_registry

    reg = task_registry(tasks_dirs)
    out: list[str] = []
    for pat in patterns:
        if pat.endswith((".yaml", ".yml")) and Path(pat).is_file():
            out.append(pat)
        elif "/" in pat or pat.endswith((".yaml", ".yml")):  # meant as a file: the registry says what is wrong
            raise UserError(reg.unknown_message(pat))
        elif _is_glob(pat):
            hits = reg.list(pat)
            if not hits:
                raise UserError(f"task pattern {pat!r} matches no task (`aimv2-eval list tasks`)")
            out += hits
        else:
            out.append(reg.canonical(pat))
    return list(dict.fromkeys(out))


def _mapping(value: Any, what: str, allowed: set[str] | dict) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{what} must be a mapping, got {value!r}")
    unknown = set(value) - set(allowed)
    if unknown:
        raise UserError(f"{what}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(allowed))}")
    return dict(value)


def expand(groups: list[dict[str, Any]], defaults: dict[str, Any], overrides: dict[str, Any],
           tasks_dirs: list[Path], where: str = "grid") -> list[Cell]:
    """Cells of every group, in order, duplicates dropped; `overrides` (the command line) win over the file."""
    cells: list[Cell] = []
    for i, group in enumerate(groups):
        what = f"{where} group {i + 1}"
        if not isinstance(group, dict):
            raise UserError(f"{what} must be a mapping with backbones and tasks")
        _mapping(group, what, _GROUP_KEYS)
        if "backbones" not in group or "tasks" not in group:
            raise UserError(f"{what} needs both `backbones` and `tasks`")
        backbones = resolve_backbones(_names(group["backbones"], f"{what} backbones"))
        tasks = resolve_tasks(_names(group["tasks"], f"{what} tasks"), tasks_dirs)
        seeds = parse_seeds(group.get("seeds", defaults.get("seeds", [0])))
        options = {**_mapping(defaults.get("options"), "options", RUN_FLAGS),
                   **_mapping(group.get("options"), f"{what} options", RUN_FLAGS), **overrides}
        resources = {**_mapping(defaults.get("resources"), "resources", RESOURCES),
                     **_mapping(group.get("resources"), f"{what} resources", RESOURCES)}
        for key, value in resources.items():  # the command line checks its own; a file's reach the scheduler
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{what} resources: {key} must be an integer >= 1, got {value!r}")
        if not isinstance(options.get("random_init", False), bool):
            raise UserError(f"{what} options: random_init must be true or false, got {options['random_init']!r}")
        opts = tuple(sorted(options.items()))
        res = tuple(sorted(resources.items()))
        # seed-major: a whole table for the first seed comes first (and cells running side by side are different
        # backbone x task pairs, so later seeds reuse a feature cache instead of computing it twice at once)
        cells += [Cell(b, t, s, opts, res) for s in seeds for b in backbones for t in tasks]
    return list(dict.fromkeys(cells))


def read_sweep_file(path: Path) -> dict[str, Any]:
    if Path(path).is_dir():
        raise UserError(f"{path} is a folder; give a sweep file such as sweeps/table3.yaml")
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"sweep file {path} does not exist (see sweeps/ for examples)") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file; give a sweep YAML such as sweeps/table3.yaml") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}); fix the file") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("grid"), list) or not raw["grid"]:
        raise UserError(f"{path} must be a mapping with a non-empty `grid:` list of groups (see sweeps/table3.yaml)")
    _mapping(raw, str(path), _FILE_KEYS)
    for i, group in enumerate(raw["grid"]):
        if not isinstance(group, dict):
            raise UserError(f"{path} grid group {i + 1} must be a mapping with backbones and tasks, got {group!r}")
    return raw


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Run options given on the sweep's command line (those not given are left to the file)."""
    out = {}
    for key in RUN_FLAGS:
        value = getattr(args, key, None)
        if value not in (None, False):
            out[key] = str(value) if isinstance(value, Path) else value
    return out


def build_grid(args: argparse.Namespace) -> Grid:
    """The grid of the command line: a sweep file, or --backbones / --tasks / --seeds (not both)."""
    tasks_dirs = [Path(d) for d in args.tasks_dir]
    overrides = overrides_from_args(args)
    resources = {k: getattr(args, k) for k in RESOURCES if getattr(args, k, None) is not None}
    if args.file:
        if args.backbones or args.tasks:
            raise UserError("give either a sweep file or --backbones/--tasks, not both")
        raw = read_sweep_file(args.file)
        tasks_dirs = [Path(args.file).parent / d
                      for d in _names(raw.get("tasks_dir", []), "tasks_dir", empty_ok=True)] + tasks_dirs
        defaults = dict(raw)
        if args.seeds:
            defaults["seeds"] = args.seeds
        groups = [dict(g) | ({"seeds": args.seeds} if args.seeds else {}) for g in raw["grid"]]
        if resources:  # the command line's resources win over the file's, in every group
            defaults["resources"] = {**(raw.get("resources") or {}), **resources}
            groups = [g | {"resources": {**(g.get("resources") or {}), **resources}} for g in groups]
        cells = expand(groups, defaults, overrides, tasks_dirs, where=str(args.file))
        name = str(raw.get("name") or Path(args.file).stem)
    else:
        if not args.backbones or not args.tasks:
            raise UserError("give a sweep file (sweeps/*.yaml) or both --backbones and --tasks")
        _names(args.backbones, "--backbones")  # `--backbones ,`: name the flag, not "command line group 1"
        _names(args.tasks, "--tasks")
        group = {"backbones": args.backbones, "tasks": args.tasks, "seeds": args.seeds or "0", "resources": resources}
        cells = expand([group], {}, overrides, tasks_dirs, where="command line")
        name = args.name or "sweep"
    if args.name:
        name = args.name
    return Grid(name=name, cells=cells, tasks_dirs=tasks_dirs)


@dataclass
class PlannedCell:
    cell: Cell
    key: str  # the cell id: backbone/task/hash-seedN, as `run` names the record
    record: Path
    argv: list[str]  # `aimv2-eval run` arguments

    @property
    def backbone(self) -> str:
        """The record's backbone name (`-random` for random_init), as the leaderboard shows it."""
        return self.key.split("/")[0]

    @property
    def label(self) -> str:
        return f"{self.backbone} x {self.cell.task} seed {self.cell.seed}"


def plan(grid: Grid, out: Path) -> list[PlannedCell]:
    """Resolve every cell's id through `run`'s own code (cheap: no weights, no data); cells with one id once."""
    from aimv2_eval.commands.run import parse_run_args, plan_cell

    planned: dict[str, PlannedCell] = {}
    for cell in grid.cells:
        argv = cell.run_argv(out, grid.tasks_dirs)
        try:
            args = parse_run_args(argv)
        except UserError as exc:  # a value from the grid that run rejects (e.g. precision: fp8)
            raise UserError(f"cell {cell.backbone} x {cell.task}: {exc}") from None
        cp = plan_cell(args)
        planned.setdefault(cp.key, PlannedCell(cell, cp.key, cp.path, argv))
    return list(planned.values())
