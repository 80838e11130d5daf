"""The local-only baseline: every organisation alone, same trainer and steps as in federation."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from client_sdk.participate import ParticipateOptions
from lab.datasets import load_digits
from lab.study.cells import expand
from lab.study.grid import parse_grid
from lab.study.local import VAL_FRACTION, run_local, train_alone
from lab.study.results import RESULTS_FILE, read_rows
from lab.study.runner import StudyOptions, plan, run_study
from lab.study.shares import StudyData
from shared.tuning import build


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _local_cell(make_grid, bases, **overrides):
    grid = parse_grid(make_grid(bases, modes=["local"], **overrides))
    return expand(grid)[0]


def test_local_baseline_reports_mean_and_spread_over_organisations(
    tmp_path, make_grid, tiny_bases, digits
):
    cell = _local_cell(make_grid, tiny_bases, organisations=3, rounds=2)
    data = StudyData(digits, tmp_path / "data")
    torch.set_num_threads(1)

    row = run_local(cell, data, "cpu")

    orgs = row["org_accuracies"]
    assert len(orgs) == 3
    assert row["final_accuracy"] == pytest.approx(statistics.fmean(orgs), abs=1e-6)
    assert row["final_accuracy_std"] == pytest.approx(statistics.pstdev(orgs), abs=1e-6)
    assert (row["final_accuracy_min"], row["final_accuracy_max"]) == (min(orgs), max(orgs))
    assert len(row["round_accuracies"]) == cell.rounds + 1
    assert row["bytes_up_per_round"] == 0
    assert sum(row["org_examples"]) == 5 * 10  # 5 shots per class, all of them shared out
    assert row["test_examples"] == len(data.test(cell.setting))


def test_each_organisation_takes_the_federated_number_of_steps(
    tmp_path, make_grid, tiny_bases, digits
):
    cell = _local_cell(make_grid, tiny_bases, rounds=3, local_epochs=2, batch_size=8)
    data = StudyData(digits, tmp_path / "data")
    bm = build(cell.spec(data.classes))
    folder = data.org_folders(cell.setting)[0]

    curve, examples, steps = train_alone(cell, bm, folder, 0, data, torch.device("cpu"))

    n_train = examples - int(examples * ParticipateOptions.val_fraction)
    per_round = cell.local_epochs * math.ceil(n_train / cell.batch_size)
    assert ParticipateOptions.val_fraction == VAL_FRACTION
    assert steps == cell.rounds * per_round
    assert len(curve) == cell.rounds + 1


def test_federated_and_local_cells_of_a_setting_get_the_same_shares(tmp_path, make_grid, digits):
    cells = expand(parse_grid(make_grid(alphas=[0.1])))
    fed, local = (next(c for c in cells if c.mode == m) for m in ("federated", "local"))
    data = StudyData(digits, tmp_path / "data")

    assert fed.setting == local.setting
    assert data.org_folders(fed.setting) == data.org_folders(local.setting)
    shares = data.shares(fed.setting)
    assert not set(shares[0]) & set(shares[1])
    assert not set(shares[0]) & set(data.split(fed.setting)[1])  # nothing from the test set


def test_the_runner_runs_only_the_cells_missing_from_results(
    tmp_path, make_grid, tiny_bases, digits
):
    grid = parse_grid(make_grid(tiny_bases, modes=["local"], shots=[5, 10], rounds=1))
    cells = expand(grid)
    data = StudyData(digits, tmp_path / "data")
    said: list[str] = []
    opts = StudyOptions(out=tmp_path, say=said.append)
    run_study(plan(cells[:1], tmp_path), data, opts)
    results = tmp_path / RESULTS_FILE
    results.write_text(results.read_text() + "torn,line")
    first = read_rows(results)[0]
    said.clear()

    failed = run_study(plan(cells, tmp_path), data, opts)

    rows = read_rows(results)
    assert failed == 0
    assert [r["cell_id"] for r in rows] == [c.id for c in cells]
    assert rows[0] == first
    assert len(said) == 1 and said[0].startswith("[2/2] ")
