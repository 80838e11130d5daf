"""The local-only baseline: each organisation trains alone on its own share.

Same spec as the federated twin (method, base, learning rate, batch size), the
same trainer (`client_sdk.training.LocalTrainer`, with the same 10 %
validation hold-out), the same share, and the same total local steps: rounds ×
epochs, run as `rounds` blocks of `epochs` epochs exactly as the federation's
rounds are (a fresh optimiser each block, the same per-round shuffling seed).
Only the averaging between blocks is missing. Each organisation is scored on
the study's held-out test set after every block; the row reports the mean over
organisations and its spread (std, min, max).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from client_sdk.data import load_local_data
from client_sdk.participate import ParticipateOptions
from client_sdk.training import LocalTrainer
from lab.evaluation import EvalSet, accuracy
from lab.study.cells import Cell
from lab.study.determinism import training_turn
from lab.study.results import curve_columns
from lab.study.shares import StudyData
from shared.tuning import BuiltModel, build

__all__ = ["run_local", "train_alone"]

# The federated participants' default, so both modes train on the same examples.
VAL_FRACTION = ParticipateOptions.val_fraction


def train_alone(
    cell: Cell, bm: BuiltModel, folder: Path, org: int, data: StudyData, device: torch.device
) -> tuple[list[float], int, int]:
    """One organisation alone from `bm` as given: (accuracy after blocks 0..R, examples, steps)."""
    spec = cell.spec(data.classes)
    trainer = LocalTrainer(
        spec,
        bm,
        load_local_data(folder, spec.task.classes),
        device=device,
        val_fraction=VAL_FRACTION,
    )
    test = EvalSet(bm, data.test(cell.setting))
    curve = [accuracy(bm, test, device)]
    steps = 0
    for block in range(1, cell.rounds + 1):
        with training_turn(spec.seed, org, block):
            steps += trainer.train(block).steps
        curve.append(accuracy(bm, test, device))
    return curve, len(trainer.train_set) + len(trainer.val_set), steps


def run_local(cell: Cell, data: StudyData, device: str) -> dict[str, Any]:
    """Every organisation alone, each from the same initial model; returns the results row."""
    started = time.perf_counter()
    bm = build(cell.spec(data.classes))
    initial = bm.trainable_state()
    runs = []
    for k, folder in enumerate(data.org_folders(cell.setting)):
        bm.load_trainable_state(initial)
        runs.append(train_alone(cell, bm, folder, k, data, torch.device(device)))
    curves = [curve for curve, _, _ in runs]
    finals = [curve[-1] for curve in curves]
    mean_curve = [statistics.fmean(accs) for accs in zip(*curves, strict=True)]
    return {
        **curve_columns(mean_curve),
        "final_accuracy_std": statistics.pstdev(finals),
        "final_accuracy_min": min(finals),
        "final_accuracy_max": max(finals),
        "org_accuracies": finals,
        "org_examples": [n for _, n, _ in runs],
        "bytes_up_per_round": 0,
        "bytes_down_per_round": 0,
        "trainable_params": bm.num_trainable,
        "total_params": bm.num_total,
        "test_examples": len(data.test(cell.setting)),
        "wall_s": round(time.perf_counter() - started, 2),
    }
