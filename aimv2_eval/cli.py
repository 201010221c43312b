"""`aimv2-eval`: one entry point; each subcommand lives in `aimv2_eval/commands/<name>.py`.

A subcommand module exposes `HELP`, `add_arguments(parser)` and `main(args) -> int`. Modules are imported only
when their command runs, so `aimv2-eval list` does not pay for torch.distributed or matplotlib.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

from aimv2_eval.errors import UserError

COMMANDS = {
    "run": "evaluate a backbone on a task and write its result record",
    "pretrain": "AIMv2 multimodal autoregressive pretraining",
    "list": "list backbones, tasks or plugins",
    "leaderboard": "build the leaderboard CSV / markdown / paper tables from records",
    "regress": "compare measured records with the paper's (or pinned) reference numbers",
    "encode": "encode images with a backbone and save their tokens",
    "sweep": "run a grid of backbones x tasks x seeds (local, torchrun or Slurm); `sweep status DIR`",
}


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aimv2-eval")
    except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
        return "unknown (not installed)"


def _module(name: str):
    return importlib.import_module(f"aimv2_eval.commands.{name.replace('-', '_')}")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aimv2-eval", description="Evaluate large vision encoders as the AIMv2 paper does.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # import only the command that runs
            _module(name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(_module(args.command).main(args) or 0)
    except UserError as exc:
        print(f"aimv2-eval {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"aimv2-eval {args.command}: interrupted; {_how_to_continue(args.command, argv)}", file=sys.stderr)
        return 130


def _how_to_continue(command: str, argv: list[str]) -> str:
    """The exact command that continues an interrupted one: `run` resumes from its last checkpoint."""
    if command == "run" and "--resume" not in argv:
        return f"continue with: aimv2-eval {shlex.join([*argv, '--resume'])}"
    return f"finished cells are kept; continue with: aimv2-eval {shlex.join(argv)}"


if __name__ == "__main__":
    sys.exit(main())
