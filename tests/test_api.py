"""The Python API at the top of the package: lazy imports, and the README's example run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import aimv2_eval
from aimv2_eval.errors import UserError

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_import_is_light():
    code = "import sys, aimv2_eval; print(sorted(m for m in ('torch', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the example writes records/ in the current folder
    scope: dict = {}
    exec(compile(_readme_example(), "README.md (Python API)", "exec"), scope)
    record, df = scope["record"], scope["df"]
    assert record["overrides"] == {"epochs": 2, "limit": 100}
    assert len(list((tmp_path / "records").rglob("*.json"))) == 1
    assert len(df) == 1 and df.loc[0, "top1"] == record["metrics"]["top1"] and df.loc[0, "epochs"] == 2
    assert df.loc[0, "overrides"] == "--epochs 2 --limit 100"
    assert scope["backbone"].num_params > 0 and scope["task"].name == "digits_probe"
    assert "aimv2-tiny" in aimv2_eval.list_backbones("aimv2-tiny*")
    # the same cell again is read back from its record, not rerun (the CLI's skip)
    again = aimv2_eval.evaluate("aimv2-tiny", "digits_probe", epochs=2, limit=100, out="records", progress=False)
    assert again == record and "exists" in capsys.readouterr().out


def test_evaluate_rejects_an_unknown_option(tmp_path):
    with pytest.raises(UserError, match="unrecognized arguments: --colour"):
        aimv2_eval.evaluate("aimv2-tiny", "digits_probe", colour="red", out=tmp_path)
