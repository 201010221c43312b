"""Plain-text tables for `list` and `regress`: one formatter, through rich, instead of one per command."""

from __future__ import annotations

import io
from collections.abc import Sequence


def text_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Aligned columns under a ruled header; no colour and no wrapping, so a piped log reads like the terminal."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(*header, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, highlight=False)
    for row in rows:
        table.add_row(*(str(x) for x in row))
    console = Console(file=io.StringIO(), width=100_000, no_color=True, record=True)
    console.print(table)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines() if line.strip())
