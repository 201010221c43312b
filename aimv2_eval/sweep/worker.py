"""What runs inside every sweep job: one `aimv2-eval run` in this process, with a state file for `sweep status`.

State files live under {out}/.sweep/state/{cell key}.json: {state: queued|running|failed|requeued, host, pid, job_id,
log, error, updated}. A finished cell needs no state: its record is the proof. Rank 0 alone writes state.

`CellJob` is the submitit callable (Slurm, and submitit's local / debug executors); its `checkpoint()` hands
submitit the same cell again, so a preempted or timed-out job is requeued and `run --resume` continues from the
plugin's last checkpoint. `python -m aimv2_eval.sweep.worker OUT KEY -- RUN-ARGS` is the same for the local and
torchrun executors.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from aimv2_eval.errors import UserError

SWEEP_DIR = ".sweep"


def sweep_dir(out: Path) -> Path:
    return Path(out) / SWEEP_DIR


def state_path(out: Path, key: str) -> Path:
    return sweep_dir(out) / "state" / f"{key}.json"


def read_state(out: Path, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(state_path(out, key).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_state(out: Path, key: str, state: str, **fields: Any) -> None:
    from aimv2_eval.io import write_json_atomic

    old = read_state(out, key) or {}
    write_json_atomic(state_path(out, key), {**old, **fields, "state": state, "updated": time.time()})


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def run_cell(argv: list[str], out: Path, key: str, **info: Any) -> int:
    """Run one cell in this process; record running / failed in its state file; return run's exit status."""
    from aimv2_eval.commands import run

    main_rank = _rank() == 0
    if main_rank:
        write_state(out, key, "running", host=socket.gethostname(), pid=os.getpid(), error=None, **info)
    try:
        code = run.run_cell(run.parse_run_args(argv))  # exactly one cell: its names are never globs
    except UserError as exc:
        if main_rank:
            write_state(out, key, "failed", error=str(exc))
        print(f"aimv2-eval run: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if main_rank:
            write_state(out, key, "failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0])
        traceback.print_exc()
        return 1
    if main_rank:
        if code == 0:
            state_path(out, key).unlink(missing_ok=True)  # the record speaks for the cell now
        else:
            write_state(out, key, "failed", error=f"run exited with status {code}")
    return int(code or 0)


class CellJob:
    """A submitit callable for one cell. Pickled into the job folder; its checkpoint is the same cell (run with
    --resume), so the requeued job continues where the plugin's checkpoint left off and writes the record once."""

    def __init__(self, argv: list[str], out: str, key: str) -> None:
        self.argv, self.out, self.key = list(argv), str(out), key

    def __call__(self) -> str:
        import submitit

        try:
            env = submitit.JobEnvironment()
            job_id, log = env.job_id, str(env.paths.stderr)
        except (RuntimeError, KeyError):  # the debug executor: in the submitting process, no job folder
            env, job_id, log = None, None, None
        if env is not None and env.num_tasks > 1:
            # a multi-GPU cell: one task per GPU, torch.distributed initialised from the Slurm environment
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        code = run_cell(self.argv, Path(self.out), self.key, job_id=job_id, log=log)
        if code != 0:
            raise RuntimeError(f"cell {self.key} failed (status {code}); see {log or 'the output above'}")
        return self.key

    def checkpoint(self) -> Any:
        import submitit

        if _rank() == 0:
            write_state(Path(self.out), self.key, "requeued")
        return submitit.helpers.DelayedSubmission(CellJob(self.argv, self.out, self.key))

    def __repr__(self) -> str:
        return f"CellJob({self.key})"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[2] != "--":
        print("usage: python -m aimv2_eval.sweep.worker OUT KEY -- RUN-ARGS", file=sys.stderr)
        return 2
    out, key = Path(argv[0]), argv[1]
    return run_cell(argv[3:], out, key, log=os.environ.get("AIMV2_EVAL_SWEEP_LOG"))


if __name__ == "__main__":
    sys.exit(main())
