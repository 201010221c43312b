"""`aimv2-eval sweep`: a grid of cells (backbone x task x seed) run locally, under torchrun, or on Slurm.

A cell is exactly one `aimv2-eval run` (same arguments, same cell id, same record); the sweep only decides which
cells still need running and hands them to an executor. grid.py expands the grid, executors.py runs it, worker.py
is what runs inside every job, status.py answers `sweep status` and the --dry-run cost estimates.
"""
