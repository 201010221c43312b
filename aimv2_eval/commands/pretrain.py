"""`aimv2-eval pretrain --config FILE [key=value ...]`: AIMv2 pretraining from a YAML recipe.

Recipes: configs/pretrain/paper.yaml (Table A1) and configs/pretrain/tiny.yaml (the embedded tiny AIMv2, 2 CPU
cores). Overrides use dotted keys, values in YAML: `optim.steps=100 data.sources.0.n=500 run.out_dir=runs/x`.
Only the command line lives here; recipes, samples, the run and its export are `aimv2_eval.pretraining`.
"""

from __future__ import annotations

import argparse
import shlex

import yaml

from aimv2_eval.pretraining import load_config, run


# ---------------------------------------------------------------- entry points
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="recipe YAML, or a name in configs/pretrain (paper, tiny)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.steps=100")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(cfg, sort_keys=False))
        return 0
    command = " ".join(["aimv2-eval pretrain --config", shlex.quote(str(args.config)),
                        *(shlex.quote(o) for o in args.overrides)])
    summary = run(cfg, command)
    last = summary.get("last", {})
    where = summary.get("export_dir") or f"{cfg['run']['out_dir']} (checkpoint; rerun the same command to continue)"
    print(f"pretrain: {summary['steps']} steps in {summary['elapsed_s']} s, loss {last.get('loss', float('nan')):.4f} "
          f"-> {where}")
    return 0
