"""Recipe fidelity (issue #17): SigLIP's tokenizer (Appendix A), Table 2's mixture with alt-text and synthetic
captions as separate sources, and the high-resolution stage (Section 2.4) that continues the 224px run."""

import csv
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aimv2_eval.config import home
from aimv2_eval.core.checkpoints import load_encoder
from aimv2_eval.core.encoder import resize_pos_embed
from aimv2_eval.core.pretrain import init_from
from aimv2_eval.data.pairs import build_source
from aimv2_eval.data.tokenizer import SentencePieceTokenizer, build_tokenizer
from aimv2_eval.errors import UserError
from aimv2_eval.pretraining import build_model, build_tokenizer_for, load_config, run

TABLES = Path(__file__).resolve().parents[2] / "shared" / "paper" / "tables"
pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- tokenizer (Appendix A)
@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    """A 30-piece sentencepiece model with SigLIP's special ids (pad 0, eos 1, unk 2, no bos)."""
    import sentencepiece as spm  # a dependency (pyproject.toml)

    folder = tmp_path_factory.mktemp("sp")
    words = ["red", "blue", "green", "circle", "square", "left", "right", "of", "the", "a", "small", "big"]
    rng = np.random.default_rng(0)
    (folder / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words, 6)) for _ in range(300)))
    spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "spiece"),
                                   vocab_size=30, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    return folder / "spiece.model"


def test_paper_recipe_uses_siglip_tokenizer_truncated_at_77(sp_model):
    paper = load_config("paper")
    assert paper["text"]["tokenizer"]["kind"] == "siglip" and paper["text"]["context_length"] == 77
    assert load_config("tiny")["text"]["tokenizer"] == "clip"  # the bundled model keeps its CLIP BPE
    cfg = load_config("paper", [f"text.tokenizer.source={sp_model}"])
    tok = build_tokenizer_for(cfg, None)
    assert isinstance(tok, SentencePieceTokenizer) and tok.vocab_size == 30 and tok.eot_id == 1
    ids = tok(["the small red circle", " ".join(["blue square"] * 80)])
    assert ids.shape == (2, 77)
    assert ids[1, -1] == tok.eot_id and (ids[1, :-1] != tok.eot_id).all()  # truncated at 77, still ends in EOS
    assert tok.decode(ids[0].tolist()) == "the small red circle"
    assert tok.spec() == {"kind": "siglip", "source": str(sp_model), "context_length": 77}
    assert torch.equal(build_tokenizer(tok.spec())(["a big square"]), tok(["a big square"]))  # saved spec rebuilds
    folder_tok = build_tokenizer({"kind": "siglip", "source": str(sp_model.parent), "context_length": 16})
    assert folder_tok.model_file == sp_model  # a folder holding spiece.model works too


def test_siglip_tokenizer_offline_is_one_line_with_the_fix():
    with pytest.raises(UserError) as err:  # conftest sets HF_HUB_OFFLINE: the hub is never reached
        build_tokenizer({"kind": "siglip", "source": "aimv2-eval-tests/no-such-siglip"})
    message = str(err.value)
    assert "\n" not in message and "hf download aimv2-eval-tests/no-such-siglip spiece.model" in message


# ---------------------------------------------------------------- Table 2 mixture
def _table2() -> list[dict]:
    with open(TABLES / "table2_pretrain_data_mixture.csv") as f:
        return list(csv.DictReader(f))


def test_paper_mixture_is_table2():
    rows = _table2()
    sources = load_config("paper")["data"]["sources"]
    assert len(sources) == len(rows) == 5
    shard_name = {"DFN": "dfn2b", "COYO": "coyo", "HQITP": "hqitp"}
    for row, source in zip(rows, sources):
        assert shard_name[row["dataset"].split(" [")[0]] in source["shards"]
        assert source["caption"] == {"alt-text": "txt", "synthetic": "synthetic.txt"}[row["caption"]]
        assert source["weight"] == pytest.approx(float(row["sampling_prob"].rstrip("%")) / 100)
    # Section 2.4: the high-resolution stage draws from the same pool without synthetic captions
    alt = [(s["shards"], s["weight"]) for s, r in zip(sources, rows) if r["caption"] == "alt-text"]
    for name in ("paper_highres_336", "paper_highres_448"):
        highres = load_config(name)["data"]["sources"]
        assert [(s["shards"], s["weight"]) for s in highres] == alt and {s["caption"] for s in highres} == {"txt"}


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (4, 4), value).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def two_caption_shard(tmp_path):
    """400 images (grey level i mod 250 at pixel 0, index in the key), each with an alt-text caption; the first
    300 also with a synthetic one."""
    import webdataset as wds

    path = tmp_path / "shard-000.tar"
    with wds.TarWriter(str(path)) as sink:
        for i in range(400):
            sample = {"__key__": f"img{i:03d}", "png": _png(i % 250), "txt": f"alt {i}"}
            if i < 300:
                sample["synthetic.txt"] = f"syn {i}"
            sink.write(sample)
    return path


def _grey(pair) -> int:
    return int(np.asarray(pair.image)[0, 0, 0])


def test_alt_text_and_synthetic_sources_sample_at_their_rates(two_caption_shard):
    over = (f"data.sources=[{{kind: webdataset, shards: '{two_caption_shard}', caption: txt, weight: 0.7}}, "
            f"{{kind: webdataset, shards: '{two_caption_shard}', caption: synthetic.txt, weight: 0.3}}]")
    cfg = load_config("tiny", [over])
    mix = build_source(cfg["data"]["sources"], seed=0)
    assert [len(s) for s in mix.sources] == [400, 300]  # images without a synthetic caption are not in that source
    synthetic = 0
    for i in range(len(mix)):  # the loop draws positions of the mixture (sample_index permutes them per epoch)
        pair = mix[i]
        kind, index = pair.caption.split()
        assert int(index) % 250 == _grey(pair) and pair.key == f"img{int(index):03d}"  # the caption is its image's
        synthetic += kind == "syn"
    # 0.3 by Table-2-style weights; uniform over samples would give 300 / 700 = 0.43
    assert abs(synthetic / len(mix) - 0.3) < 0.06  # 3.5 standard deviations of a binomial(700, 0.3) fraction
    assert [mix[i].caption for i in range(50)] == [mix[i].caption for i in range(50)]  # seeded per position


def test_hf_columns_as_two_sources(tmp_path):
    import datasets

    n = 150
    ds = datasets.Dataset.from_dict(
        {"image": [Image.new("L", (4, 4), i) for i in range(n)], "alt_text": [f"alt {i}" for i in range(n)],
         "synthetic": [f"syn {i}" if i % 3 else None for i in range(n)]},
        features=datasets.Features({"image": datasets.Image(), "alt_text": datasets.Value("string"),
                                    "synthetic": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "ds"))
    spec = [{"kind": "hf", "path": str(tmp_path / "ds"), "caption": "alt_text", "weight": 0.5},
            {"kind": "hf", "path": str(tmp_path / "ds"), "caption": ["synthetic", "alt_text"], "weight": 0.5}]
    mix = build_source(spec, seed=1)
    pairs = [mix[i] for i in range(len(mix))]
    for pair in pairs:
        kind, index = pair.caption.split()
        assert int(index) == _grey(pair) and (kind == "alt" or int(index) % 3)  # null synthetic: the fallback
    assert 0.25 < np.mean([p.caption.startswith("syn") for p in pairs]) < 0.42  # 0.5 x the 2/3 of rows with one
    only_synthetic = build_source({"kind": "hf", "path": str(tmp_path / "ds"), "caption": "synthetic"})
    assert only_synthetic[1].caption == "syn 1"
    with pytest.raises(UserError, match=r"row 0 has no caption in synthetic \(null\)"):
        only_synthetic[0]
    with pytest.raises(UserError, match="no column 'synthetc'"):
        build_source({"kind": "hf", "path": str(tmp_path / "ds"), "caption": "synthetc"})


def test_unknown_caption_fields_fail_in_one_line(two_caption_shard, tmp_path):
    with pytest.raises(UserError, match=r"no caption field 'synthetic\.text' \(it has png, synthetic.txt, txt\)"):
        build_source({"kind": "webdataset", "shards": str(two_caption_shard), "caption": "synthetic.text"})
    with pytest.raises(UserError, match="no caption field 'alt'"):  # a typo in a fallback list is caught too
        build_source({"kind": "webdataset", "shards": str(two_caption_shard), "caption": ["txt", "alt"]})
    Image.new("RGB", (4, 4)).save(tmp_path / "cat.png")
    (tmp_path / "cat.txt").write_text("alt")
    (tmp_path / "cat.synthetic.txt").write_text("syn")
    assert build_source({"kind": "folder", "path": str(tmp_path), "caption": "synthetic.txt"})[0].caption == "syn"
    assert build_source({"kind": "folder", "path": str(tmp_path)})[0].caption == "alt"
    with pytest.raises(UserError, match="no caption field 'synth.txt'"):
        build_source({"kind": "folder", "path": str(tmp_path), "caption": ["synthetic.txt", "synth.txt"]})
    with pytest.raises(UserError, match="data.sources.0.caption must be absent: a scenes source"):
        load_config("tiny", ["data.sources.0.caption=txt"])
    with pytest.raises(UserError, match="data.sources.1.caption must be a caption field"):
        load_config("paper", ["data.sources.1.caption=[]"])


# ---------------------------------------------------------------- high-resolution stage (Section 2.4)
@pytest.mark.parametrize("name, size", [("paper_highres_336", 336), ("paper_highres_448", 448)])
def test_highres_recipes_continue_the_224px_run(name, size):
    paper, cfg = load_config("paper"), load_config(name)
    assert cfg["model"]["image_size"] == cfg["data"]["augment"]["crop_size"] == size
    assert cfg["optim"]["weight_decay"] == 0 and cfg["highres"]["enabled"]
    assert cfg["optim"]["steps"] == math.ceil(2e9 / paper["batch"]["size"])  # 2B pairs at Table A1's batch
    assert cfg["init_from"] == str(Path(paper["run"]["out_dir"]) / "model")  # where the 224px run exports
    assert cfg["text"] == paper["text"] and cfg["model"]["size"] == paper["model"]["size"]
    assert cfg["run"]["out_dir"] != paper["run"]["out_dir"]
    with pytest.raises(UserError, match="init_from must be the 224px run's model folder"):
        load_config(name, ["init_from=null"])


def test_init_from_places_and_recipe_bases(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("paper_highres_336", ["init_from=apple/aimv2-large-patch14-224"])["init_from"] == (
        "apple/aimv2-large-patch14-224")  # a hub id stays one
    assert load_config("paper_highres_336", ["init_from=runs/x/model"])["init_from"] == str(tmp_path / "runs/x/model")
    (tmp_path / "mine.yaml").write_text("base: paper_highres_448\ninit_from: runs/base/model\nbatch: {size: 64}\n")
    mine = load_config(str(tmp_path / "mine.yaml"))
    assert mine["model"]["image_size"] == 448 and mine["batch"]["size"] == 64 and mine["optim"]["weight_decay"] == 0
    assert mine["init_from"] == str(home() / "pretrain" / "runs" / "base" / "model")
    (tmp_path / "a.yaml").write_text("base: b\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(UserError, match="leads back to itself"):
        load_config(str(tmp_path / "a.yaml"))


MICRO = {  # a 64-d, 2-block encoder on 200 scenes; the same model and tokenizer at both stages
    "model.size": "micro", "model.encoder": "{embed_dim: 64, depth: 2, num_heads: 2}",
    "model.decoder": "{width: 64, depth: 1, num_heads: 2}", "text.tokenizer": "clip", "text.context_length": 48,
    "text.compact_vocab": 300, "data.sources": "[{kind: scenes, n: 200, seed: 0, image_size: 84}]",
    "batch.size": 8, "optim.warmup_steps": 1, "run.export_dir": "null", "run.progress": "false",
    "run.threads": 1, "run.ckpt_every": 1000,
}


def _micro(recipe: str, image_size: int, out_dir: Path, **extra) -> dict:
    over = {**MICRO, "model.image_size": image_size, "data.augment.crop_size": image_size,
            "run.out_dir": str(out_dir), **extra}
    return load_config(recipe, [f"{k}={v}" for k, v in over.items()])


def test_highres_stage_resamples_position_embeddings(tmp_path):
    """224 -> 336 in miniature: 56px (4x4 patches) -> 84px (6x6), through paper_highres_336.yaml."""
    base = run(_micro("tiny", 56, tmp_path / "base", **{"optim.steps": 2}))
    model_dir = Path(base["model_dir"])
    old = load_encoder(model_dir)[0]
    cfg = _micro("paper_highres_336", 84, tmp_path / "hr", init_from=model_dir, **{"optim.steps": 1,
                 "optim.lr": 1e-12, "optim.min_lr": 0})  # an update too small to move the weights we compare
    assert cfg["highres"]["enabled"] and cfg["optim"]["weight_decay"] == 0
    expected = resize_pos_embed(old.preprocessor.pos_embed.detach(), 4, (6, 6))
    model = build_model(cfg, build_tokenizer_for(cfg, build_source(cfg["data"]["sources"])))
    fresh = model.encoder.preprocessor.pos_embed.detach().clone()
    init_from(model, model_dir)
    assert torch.equal(model.encoder.preprocessor.pos_embed.detach(), expected)
    assert not torch.allclose(fresh, expected)
    hr = run(cfg)  # the pipeline loads init_from itself
    new = load_encoder(hr["model_dir"])[0]
    assert new.cfg.image_size == 84 and new.preprocessor.pos_embed.shape == (1, 36, 64)
    assert torch.allclose(new.preprocessor.pos_embed, expected, atol=1e-6)
    assert torch.allclose(new.trunk.blocks[1].mlp.fc2.weight, old.trunk.blocks[1].mlp.fc2.weight, atol=1e-6)
