"""`aimv2-eval encode` end to end on real images shipped with foolbox."""

import importlib.util
import json
from pathlib import Path

import pytest
from safetensors import safe_open

from aimv2_eval.cli import main


def _foolbox_images() -> list[str]:
    spec = importlib.util.find_spec("foolbox")
    if spec is None:
        pytest.skip("foolbox (test extra) not installed")
    folder = Path(spec.origin).parent / "data"
    return [str(p) for p in sorted(folder.glob("imagenet_0[0-2]_*.jpg"))]


def test_encode_writes_tokens_per_image(tmp_path):
    images = _foolbox_images()
    out = tmp_path / "tokens.safetensors"
    assert main(["encode", "--backbone", "aimv2-tiny", "--random-init", "--out", str(out), *images]) == 0
    with safe_open(str(out), "pt") as f:
        assert sorted(f.keys()) == [f"image/{i}" for i in range(len(images))]
        assert tuple(f.get_tensor("image/0").shape) == (64, 192)  # 112px / 14 = 8 x 8 grid, width 192
        assert json.loads(f.metadata()["files"]) == images
    assert json.loads(out.with_suffix(".json").read_text())["grids"] == [[8, 8]] * len(images)


def test_encode_missing_input_fails_cleanly(tmp_path, capsys):
    rc = main(["encode", "--backbone", "aimv2-tiny", "--random-init", "--out", str(tmp_path / "x.st"), "/no/such/dir"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no such image file or folder" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.st").exists()
