"""`aimv2-eval pretrain --config FILE [key=value ...]`: AIMv2 pretraining from a YAML recipe.

Recipes: configs/pretrain/paper.yaml (Table A1) and configs/pretrain/tiny.yaml (the embedded tiny AIMv2, 2 CPU
cores). Overrides use dotted keys, values in YAML: `optim.steps=100 data.sources.0.n=500 run.out_dir=runs/x`.
Only the command line lives here; recipes, samples, the run and its export are `aimv2_eval.pretraining`.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import yaml

from aimv2_eval.pretraining import load_config, run


# ---------------------------------------------------------------- entry points
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="recipe YAML, or a name in configs/pretrain (paper, tiny)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.steps=100")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")


def check_outputs(cfg: dict) -> None:
    """The device and the output folders, before any data, tokenizer or model is built."""
    from aimv2_eval.errors import UserError
    from aimv2_eval.launch.distributed import parse_device, resolve_device
    from aimv2_eval.paths import writable_dir

    r = cfg.get("run")
    if not isinstance(r, dict):
        raise UserError("the recipe's `run` is not a mapping; fix the YAML (see configs/pretrain/tiny.yaml)")
    resolve_device(r.get("device"), flag="run.device")
    r["device"] = parse_device(r.get("device"), "run.device")  # the spelling the loop's torch.device takes
    for key in ("out_dir", "export_dir"):
        value = r.get(key)
        if key == "export_dir" and not value:  # none: the model stays in out_dir
            continue
        if not isinstance(value, str | Path):
            raise UserError(f"run.{key} must be a folder path, got {value!r}; set run.{key}=DIR")
        writable_dir(value, f"run.{key}")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(cfg, sort_keys=False))
        return 0
    check_outputs(cfg)
    command = " ".join(["aimv2-eval pretrain --config", shlex.quote(str(args.config)),
                        *(shlex.quote(o) for o in args.overrides)])
    summary = run(cfg, command)
    last = summary.get("last", {})
    where = summary.get("export_dir") or f"{cfg['run']['out_dir']} (checkpoint; rerun the same command to continue)"
    print(f"pretrain: {summary['steps']} steps in {summary['elapsed_s']} s, loss {last.get('loss', float('nan')):.4f} "
          f"-> {where}")
    return 0
