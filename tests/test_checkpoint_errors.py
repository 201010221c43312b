"""Bad checkpoints and weights end in one `aimv2-eval <command>: error: ...` line naming the file, exit status 2, no
traceback and nothing written; `run` fails before it loads any data (the checkpoint is checked by
`describe_backbone`, on names and shapes only). Each case breaks a copy of the embedded tiny AIMv2."""

import json
import os
import pickle
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from aimv2_eval.backbones import create_backbone, describe_backbone
from aimv2_eval.backbones.aimv2 import TINY_DIR, check_source
from aimv2_eval.cli import main
from aimv2_eval.core.checkpoints import load_encoder, save_encoder
from aimv2_eval.engine import Checkpointer
from aimv2_eval.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_FILES = ("config.json", "preprocessor_config.json", "model.safetensors")


class Exploit:
    """Unpickling this runs a shell command: what a malicious weights file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


# ---------------------------------------------------------------- builders: each returns the --weights source
def tiny_copy(tmp_path: Path, name: str = "ckpt") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for f in TINY_FILES:
        shutil.copy(TINY_DIR / f, folder / f)
    return folder


def _json(file: str, text: str | None = None, **changes):
    """A tiny copy whose JSON file `file` is `text`, or the original with `changes` (None deletes a key)."""

    def build(tmp_path: Path) -> Path:
        folder = tiny_copy(tmp_path)
        if text is not None:
            (folder / file).write_text(text)
            return folder
        data = json.loads((folder / file).read_text())
        for key, value in changes.items():
            if value is None:
                data.pop(key)
            else:
                data[key] = value
        (folder / file).write_text(json.dumps(data))
        return folder

    return build


def config(text: str | None = None, **changes):
    return _json("config.json", text, **changes)


def preprocessor(text: str | None = None, **changes):
    return _json("preprocessor_config.json", text, **changes)


def no_config(tmp_path: Path) -> Path:
    folder = tiny_copy(tmp_path)
    (folder / "config.json").unlink()
    return folder


def weights_bytes(make):
    def build(tmp_path: Path) -> Path:
        folder = tiny_copy(tmp_path)
        path = folder / "model.safetensors"
        path.write_bytes(make(path.read_bytes()))
        return folder

    return build


def edit_tensors(edit):
    def build(tmp_path: Path) -> Path:
        folder = tiny_copy(tmp_path)
        sd = load_file(str(folder / "model.safetensors"))
        edit(sd)
        save_file(sd, str(folder / "model.safetensors"))
        return folder

    return build


def hf_scheme(edit):
    """The tiny encoder saved in transformers' key scheme, then edited."""

    def build(tmp_path: Path) -> Path:
        folder = tmp_path / "hf"
        save_encoder(load_encoder(TINY_DIR)[0], folder, scheme="hf")
        sd = load_file(str(folder / "model.safetensors"))
        edit(sd)
        save_file(sd, str(folder / "model.safetensors"))
        return folder

    return build


def sharded(index=None, missing_shard: bool = False):
    """The tiny weights in two shards with an index; `index` replaces the index file's text."""

    def build(tmp_path: Path) -> Path:
        folder = tiny_copy(tmp_path)
        sd = load_file(str(folder / "model.safetensors"))
        (folder / "model.safetensors").unlink()
        keys = sorted(sd)
        parts = {"model-00001-of-00002.safetensors": keys[:20], "model-00002-of-00002.safetensors": keys[20:]}
        for name, part in parts.items():
            save_file({k: sd[k] for k in part}, str(folder / name))
        if missing_shard:
            (folder / "model-00002-of-00002.safetensors").unlink()
        weight_map = {k: name for name, part in parts.items() for k in part}
        text = json.dumps({"weight_map": weight_map}) if index is None else index
        (folder / "model.safetensors.index.json").write_text(text)
        return folder

    return build


def pickled(obj_of, name: str = "weights.pt", save=pickle.dump):
    """A weights file beside a valid config.json: `obj_of(tmp_path)` written with `save` (pickle or torch)."""

    def build(tmp_path: Path) -> Path:
        folder = tiny_copy(tmp_path)
        (folder / "model.safetensors").unlink()
        path = folder / name
        with open(path, "wb") as f:
            save(obj_of(tmp_path), f)
        return path

    return build


def raw_file(name: str, data: bytes):
    def build(tmp_path: Path) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return build


def directory(name: str):
    def build(tmp_path: Path) -> Path:
        (tmp_path / name).mkdir()
        return tmp_path / name

    return build


def json_file_as_weights(tmp_path: Path) -> Path:
    return tiny_copy(tmp_path) / "config.json"


def missing_hub_repo(tmp_path: Path) -> str:
    return "nobody-here/no-such-aimv2-checkpoint"


def _drop(key):
    return lambda sd: sd.pop(key)


def _add(key, value):
    return lambda sd: sd.__setitem__(key, value)


JUNK = b"\x00\xffthis is not a checkpoint\n" * 40

# id -> (builder, words the one error line must contain)
CASES = {
    # config.json
    "config-not-json": (config("{hidden_size: 192"), ["config.json", "not valid JSON"]),
    "config-a-list": (config("[1, 2, 3]"), ["config.json", "array", "not a JSON object"]),
    "config-a-number": (config("3"), ["config.json", "number", "not a JSON object"]),
    "config-missing": (no_config, ["no config.json", "num_attention_heads"]),
    "config-hidden-size-string": (config(hidden_size="abc"), ["config.json", "hidden_size", "positive integer"]),
    "config-layers-negative": (config(num_hidden_layers=-1), ["config.json", "num_hidden_layers", "positive integer"]),
    "config-heads-do-not-divide": (config(num_attention_heads=5), ["config.json", "num_attention_heads 5",
                                                                   "does not divide"]),
    "config-heads-missing": (config(num_attention_heads=None), ["config.json", "num_attention_heads"]),
    "config-eps-string": (config(rms_norm_eps="small"), ["rms_norm_eps", "positive number"]),
    "config-native-string": (config(is_native="no"), ["is_native", "true or false"]),
    "config-vision-config-list": (config(vision_config=[1]), ["vision_config", "JSON object"]),
    "config-width-contradicts-weights": (config(hidden_size=384), ["hidden_size 384", "holds 192",
                                                                   "different checkpoints"]),
    "config-depth-contradicts-weights": (config(num_hidden_layers=12), ["num_hidden_layers 12", "holds 6"]),
    "config-image-size-contradicts-weights": (config(image_size=224), ["image_size 224", "holds 112"]),
    # preprocessor_config.json
    "preprocessor-not-json": (preprocessor("nope"), ["preprocessor_config.json", "not valid JSON"]),
    "preprocessor-a-list": (preprocessor("[]"), ["preprocessor_config.json", "not a JSON object"]),
    "preprocessor-negative-crop": (preprocessor(crop_size={"height": -5, "width": -5}),
                                   ["preprocessor_config.json", "crop_size", "-5"]),
    "preprocessor-size-string": (preprocessor(size="big"), ["preprocessor_config.json", "size", "'big'"]),
    "preprocessor-mean-two-values": (preprocessor(image_mean=[0.5, 0.5]), ["image_mean", "three numbers"]),
    "preprocessor-std-zero": (preprocessor(image_std=[0, 0, 0]), ["image_std", "positive"]),
    "preprocessor-resample-string": (preprocessor(resample="cubic"), ["resample", "'cubic'"]),
    # model.safetensors
    "weights-truncated": (weights_bytes(lambda b: b[: len(b) // 2]), ["model.safetensors", "cannot read weights",
                                                                      "re-download"]),
    "weights-random-bytes": (weights_bytes(lambda b: JUNK), ["model.safetensors", "cannot read weights"]),
    "weights-empty": (weights_bytes(lambda b: b""), ["model.safetensors", "empty (0 bytes)"]),
    "weights-tensor-missing": (edit_tensors(_drop("trunk.blocks.3.mlp.fc2.weight")),
                               ["model.safetensors", "missing 1", "trunk.blocks.3.mlp.fc2.weight"]),
    "weights-tensor-misshapen": (edit_tensors(_add("trunk.blocks.2.attn.proj.weight", torch.zeros(192, 100))),
                                 ["misshapen", "trunk.blocks.2.attn.proj.weight"]),
    "weights-extra-encoder-tensor": (edit_tensors(_add("trunk.blocks.0.attn.qkv.bias", torch.zeros(576))),
                                     ["unexpected 1", "trunk.blocks.0.attn.qkv.bias"]),
    "weights-no-patch-embedding": (edit_tensors(_drop("preprocessor.patchifier.proj.weight")),
                                   ["no AIMv2 encoder weights", "proj.weight"]),
    "weights-hf-qkv-bias": (hf_scheme(_add("encoder.layers.0.attention.q_proj.bias", torch.zeros(192))),
                            ["unexpected", "q_proj.bias"]),
    "weights-hf-k-proj-missing": (hf_scheme(_drop("encoder.layers.1.attention.k_proj.weight")),
                                  ["layer 1", "lacks k_proj.weight"]),
    # sharded checkpoints
    "index-not-json": (sharded("{weight_map"), ["model.safetensors.index.json", "not valid JSON"]),
    "index-not-an-object": (sharded("[]"), ["model.safetensors.index.json", "not a JSON object"]),
    "index-no-weight-map": (sharded("{}"), ["model.safetensors.index.json", "weight_map"]),
    "index-weight-map-a-list": (sharded('{"weight_map": ["a.safetensors"]}'), ["weight_map", "object"]),
    "index-weight-map-number-shard": (sharded('{"weight_map": {"x": 3}}'), ["weight map names 3"]),
    "index-shard-missing": (sharded(missing_shard=True), ["model-00002-of-00002.safetensors", "1 of 2 shards"]),
    # weights files
    "pickle-malicious": (pickled(lambda t: {"w": Exploit(t / "MARKER")}),
                         ["refusing to unpickle", "weights.pt", "objects other than tensors", "safetensors"]),
    "torch-save-malicious": (pickled(lambda t: {"w": Exploit(t / "MARKER")}, save=torch.save),
                             ["refusing to unpickle", "weights.pt", "objects other than tensors"]),
    "pickle-plain-values": (pickled(lambda t: {"w": 1, "b": "x"}, "model.bin"), ["model.bin", "safetensors"]),
    "torch-save-non-tensors": (pickled(lambda t: {"w": 1, "b": "x"}, "model.pth", save=torch.save),
                               ["model.pth", "not a state dict of tensors"]),
    "torch-save-a-list": (pickled(lambda t: [torch.zeros(1)], "model.pt", save=torch.save),
                          ["model.pt", "holds a list"]),
    "weights-file-empty": (raw_file("model.bin", b""), ["model.bin", "empty (0 bytes)"]),
    "weights-file-junk": (raw_file("model.pth", JUNK), ["model.pth", "cannot read weights"]),
    "weights-file-is-a-directory": (directory("model.safetensors"), ["model.safetensors", "is a directory"]),
    "folder-without-weights": (directory("empty"), ["no weights in", "model.safetensors"]),
    "json-file-as-weights": (json_file_as_weights, ["config.json", "JSON file, not weights", "directory"]),
    "hub-id-offline-not-cached": (missing_hub_repo, ["nobody-here/no-such-aimv2-checkpoint", "offline",
                                                     "not in the Hugging Face cache", "local directory"]),
}


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "image.png"
    Image.new("RGB", (40, 30), (120, 30, 200)).save(path)
    return path


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """Offline with an empty Hugging Face cache, whatever this machine has cached."""
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def _argv(command: str, source: Path | str, tmp_path: Path, image: Path) -> list[str]:
    if command == "encode":
        return ["encode", "--backbone", "aimv2-tiny", "--weights", str(source), "--out",
                str(tmp_path / "out" / "tokens.safetensors"), str(image)]
    return ["run", "--backbone", "aimv2-tiny", "--weights", str(source), "--task", "digits_probe", "--limit", "8",
            "--epochs", "1", "--no-feature-cache", "--no-progress", "--out", str(tmp_path / "out")]


def _one_error_line(capsys, command: str, words: list[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"aimv2-eval {command}: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.mark.usefixtures("empty_hub_cache")
@pytest.mark.parametrize("command", ["encode", "run"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_checkpoint_is_one_line(tmp_path, image, capsys, case, command):
    build, words = CASES[case]
    source = build(tmp_path)
    assert main(_argv(command, source, tmp_path, image)) == 2
    _one_error_line(capsys, command, words)
    # nothing written; for `run` not even the records folder: it failed before loading data
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "MARKER").exists()  # the malicious pickles never ran


def test_checked_without_loading_weights(tmp_path, monkeypatch):
    """`describe_backbone` (run's planning step) checks the checkpoint on names and shapes: no tensor data read."""
    import aimv2_eval.core.checkpoints as ck

    def no_load(*args, **kwargs):
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(ck, "load_file", no_load)
    folder = tiny_copy(tmp_path)
    assert describe_backbone("aimv2-tiny", str(folder)) == describe_backbone("aimv2-tiny")
    (folder / "config.json").write_text(json.dumps({**json.loads((TINY_DIR / "config.json").read_text()),
                                                    "intermediate_size": 768}))
    with pytest.raises(UserError, match="intermediate_size 768 but .* holds 512"):
        describe_backbone("aimv2-tiny", str(folder))


def test_valid_copy_loads_the_same_weights(tmp_path):
    folder = tiny_copy(tmp_path)
    (folder / "config.json").write_text(json.dumps({**json.loads((TINY_DIR / "config.json").read_text()),
                                                    "some_field_we_do_not_read": [1, 2]}))
    check_source(folder)  # unknown config fields are ignored
    a, b = create_backbone("aimv2-tiny"), create_backbone("aimv2-tiny", weights=str(folder))
    assert a.preprocess == b.preprocess and a.weights_id == b.weights_id
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_tensors_outside_the_encoder_are_kept_aside(tmp_path):
    """Decision: a head or text tower beside the encoder (as LiT and transformers checkpoints have) is not an
    error; it is kept in `extra_state`. Only tensors inside the encoder's key namespace must match exactly."""
    path = edit_tensors(_add("head.linear.weight", torch.zeros(10, 192)))(tmp_path)
    encoder, ckpt = load_encoder(path)
    assert "head.linear.weight" in ckpt.extra_state and encoder.cfg.embed_dim == 192


def test_file_backbone_with_a_bad_checkpoint(tmp_path, image, capsys):
    """`--backbone file:DIR` reads the checkpoint for its architecture (random build): same one-line errors."""
    folder = config(num_hidden_layers=7)(tmp_path)
    out = tmp_path / "out" / "t.safetensors"
    assert main(["encode", "--backbone", f"file:{folder}", "--random-init", "--out", str(out), str(image)]) == 2
    _one_error_line(capsys, "encode", ["num_hidden_layers 7", "holds 6"])
    assert not out.exists()


# ---------------------------------------------------------------- the resumable training state
def _saved_state(tmp_path: Path) -> Path:
    ck = Checkpointer(tmp_path / "cell.ckpt", fingerprint={"lr": 1})
    ck.save({"step": 3, "model": {"w": torch.ones(4)}})
    return ck.path


def _load_error(path: Path, fingerprint=None) -> str:
    with pytest.raises(UserError) as err:
        Checkpointer(path, fingerprint=fingerprint).load()
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


def test_checkpointer_truncated_or_empty_names_the_file_to_delete(tmp_path):
    path = _saved_state(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "delete it to start over" in _load_error(path, {"lr": 1})
    path.write_bytes(b"")
    assert "empty" in _load_error(path, {"lr": 1})
    path.write_bytes(JUNK)
    assert "delete it to start over" in _load_error(path, {"lr": 1})


@pytest.mark.parametrize("save", [pickle.dump, torch.save], ids=["pickle", "torch-save"])
def test_checkpointer_refuses_a_malicious_file(tmp_path, save, recwarn):
    path = tmp_path / "cell.ckpt"
    with open(path, "wb") as f:
        save({"fingerprint": None, "rng": Exploit(tmp_path / "MARKER")}, f)
    message = _load_error(path)
    assert message.startswith(f"refusing to unpickle {path}: it holds objects other than tensors")
    assert "weights_only" not in message  # not torch's advice to switch the safeguard off
    assert not (tmp_path / "MARKER").exists()
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]  # nothing more on stderr


def test_checkpointer_foreign_contents(tmp_path):
    path = tmp_path / "cell.ckpt"
    torch.save([1, 2], path)
    assert "not a resumable training state" in _load_error(path)
    torch.save({"fingerprint": None, "step": 1}, path)
    assert "incomplete" in _load_error(path)
    _saved_state(tmp_path)
    assert "another run" in _load_error(tmp_path / "cell.ckpt", {"lr": 2})
    state = Checkpointer(tmp_path / "cell.ckpt", fingerprint={"lr": 1}).load()
    assert state["step"] == 3 and torch.equal(state["model"]["w"], torch.ones(4))
