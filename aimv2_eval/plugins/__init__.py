"""Task plugins, registered by name and imported only when a task uses them.

A module or package in this folder is a plugin under its own name (`probe.py` -> "probe", `lit/` -> "lit"): it defines
`PLUGIN`, an instance of `plugins.base.Plugin` (a package may define it in its `plugin` submodule). Installed
distributions add plugins through the `aimv2_eval.plugins` entry-point group (name -> module). Nothing is imported
to list them: the summary is the first paragraph of the module's docstring.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from aimv2_eval.plugins.base import Plugin, PluginResult, RunOptions
from aimv2_eval.registry import Registry


@dataclass(frozen=True)
class PluginSpec:
    name: str
    module: str  # defines PLUGIN, an instance of plugins.base.Plugin
    summary: str
    tables: str = ""  # the paper tables the plugin reproduces


PLUGINS: Registry[PluginSpec] = Registry("plugin")
PLUGINS.register(
    "probe",
    PluginSpec("probe", "aimv2_eval.plugins.probe", "attentive probe on frozen last-layer patch tokens, lr x wd grid",
               "3, A2, B1, B2"),
    aliases=("attentive_probe",),
)


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
        if info.name == "base" or info.name in registry:
            continue
        if info.ispkg:
            module = f"{package}.{info.name}" + (".plugin" if (folder / info.name / "plugin.py").is_file() else "")
            summary = _summary(folder / info.name / "__init__.py")
        else:
            module, summary = f"{package}.{info.name}", _summary(folder / f"{info.name}.py")
        registry.register(info.name, PluginSpec(info.name, module, summary))


def _discover() -> None:
    discover(Path(__file__).parent, __name__, PLUGINS)
    for ep in entry_points(group="aimv2_eval.plugins"):
        if ep.name not in PLUGINS:
            PLUGINS.register(ep.name, PluginSpec(ep.name, ep.value, f"from {ep.dist.name if ep.dist else 'an entry point'}"))


_discover()


def get_plugin(name: str) -> Plugin:
    spec = PLUGINS.get(name)
    module = importlib.import_module(spec.module)
    if not hasattr(module, "PLUGIN"):
        raise TypeError(f"plugin module {spec.module} defines no PLUGIN (an instance of aimv2_eval.plugins.base.Plugin)")
    return module.PLUGIN


def plugin_rows(pattern: str | None = None) -> list[dict[str, str]]:
    """Rows for `aimv2-eval list plugins [PATTERN]`."""
    rows = []
    for name in PLUGINS.list(pattern):
        spec = PLUGINS.get(name)
        rows.append({"name": name, "summary": spec.summary, "tables": spec.tables, "module": spec.module,
                     "aliases": ", ".join(PLUGINS.aliases_of(name))})
    return rows


__all__ = ["PLUGINS", "Plugin", "PluginResult", "PluginSpec", "RunOptions", "get_plugin", "plugin_rows"]
