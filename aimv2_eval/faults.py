"""Fail points for the crash tests: `AIMV2_EVAL_KILL_AT=POINT[:N]` kills this process with SIGKILL the N-th time
(default: the first) it reaches `fail_point(POINT)`.

A kill -9 at a chosen moment (half a feature cache written, a checkpoint saved mid-run, a record's temporary file
written but not yet renamed) is what tests/test_crash_resume.py needs to check that a rerun gives identical metrics
and leaves nothing behind; timing a kill from outside would hit those moments only by chance. Unset, a point costs
one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "AIMV2_EVAL_KILL_AT"
_hits: dict[str, int] = {}


def fail_point(name: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
