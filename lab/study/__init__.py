"""The FedTune study: the paper's grid of methods × families × bases × α × shots, run for real.

A grid is data (`grid.py`, YAML presets in `presets/`); a cell is a frozen
description with a stable id (`cells.py`); running a cell is one function
that returns a row (`federated.py` through a real aggregator process and
HTTP, `local.py` for the local-only baseline); rows are appended to
results.csv as each cell finishes (`results.py`, `runner.py`), which is what
makes a study resumable; summary.md and the plots are drawn from results.csv
alone (`report.py`, `findings.py`, `plots.py`). `cli.py` is `fedtune-study
run` and `fedtune-study report`.
"""
