"""The plugin registry: names -> where each plugin lives, found without importing any plugin.

A module or package in this folder is a plugin under its own name (`probe.py` -> "probe", `lit/` -> "lit"): it defines
`PLUGIN`, an instance of `plugins.base.Plugin` (a package may define it in its `plugin` submodule). Installed
distributions add plugins through the `aimv2_eval.plugins` entry-point group (name -> module). Nothing is imported
to list them: the summary is the first paragraph of the module's docstring.

Imports nothing of ours beyond the generic registry, so that task specs (`aimv2_eval.tasks`) can check plugin names
while plugins use task specs.
"""

from __future__ import annotations

import ast
import pkgutil
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from aimv2_eval.registry import Registry

ENTRY_POINT_GROUP = "aimv2_eval.plugins"
NOT_PLUGINS = frozenset({"base", "registry"})  # modules of this folder that are the machinery, not plugins


@dataclass(frozen=True)
class PluginSpec:
    name: str
    module: str  # defines PLUGIN, an instance of plugins.base.Plugin
    summary: str
    tables: str = ""  # the paper tables the plugin reproduces


def _summary(path: Path) -> str:
    try:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    except (OSError, SyntaxError):
        return ""
    first = " ".join(doc.split("\n\n")[0].split())
    return first if len(first) <= 100 else first[:97] + "..."


def discover(folder: Path, package: str, registry: Registry[PluginSpec]) -> None:
    """Register every module / package in `folder` (importable as `package`.<name>) under its own name."""
    for info in pkgutil.iter_modules([str(folder)]):
        if info.name in NOT_PLUGINS or info.name in registry:
            continue
        if info.ispkg:
            module = f"{package}.{info.name}" + (".plugin" if (folder / info.name / "plugin.py").is_file() else "")
            summary = _summary(folder / info.name / "__init__.py")
        else:
            module, summary = f"{package}.{info.name}", _summary(folder / f"{info.name}.py")
        registry.register(info.name, PluginSpec(info.name, module, summary))


def _build() -> Registry[PluginSpec]:
    registry: Registry[PluginSpec] = Registry("plugin")
    registry.register(
        "probe",
        PluginSpec("probe", "aimv2_eval.plugins.probe",
                   "attentive probe on frozen last-layer patch tokens, lr x wd grid", "3, A2, B1, B2"),
        aliases=("attentive_probe",),
    )
    package = __name__.rpartition(".")[0]
    discover(Path(__file__).parent, package, registry)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in registry:
            registry.register(ep.name, PluginSpec(ep.name, ep.value,
                                                  f"from {ep.dist.name if ep.dist else 'an entry point'}"))
    return registry


PLUGINS: Registry[PluginSpec] = _build()
