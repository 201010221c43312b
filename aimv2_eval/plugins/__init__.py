"""Task plugins, registered by name (`plugins/registry.py`) and imported only when a task uses them."""

from __future__ import annotations

import importlib

from aimv2_eval.plugins.base import Plugin, PluginResult, RunOptions
from aimv2_eval.plugins.registry import PLUGINS, PluginSpec, discover


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


__all__ = ["PLUGINS", "Plugin", "PluginResult", "PluginSpec", "RunOptions", "discover", "get_plugin", "plugin_rows"]
