"""Cell ids are stable and distinct; results.csv survives a torn last line; resume plans the rest."""

from __future__ import annotations

import csv
from dataclasses import replace

from lab.study.cells import expand
from lab.study.grid import load_preset, parse_grid
from lab.study.results import COLUMNS, RESULTS_FILE, append_row, done_ids, read_rows, repair
from lab.study.runner import plan, select


def _row(cell, accuracy=0.5):
    return {
        "cell_id": cell.id,
        **cell.fields(),
        "final_accuracy": accuracy,
        "round_accuracies": [0.1, accuracy],
    }


def test_cell_ids_are_stable_across_runs_and_readable():
    cells = expand(load_preset("quick"))

    again = expand(load_preset("quick"))

    assert [c.id for c in cells] == [c.id for c in again]
    first = cells[0]
    assert first.id.startswith("open_clip-pretrained-full-a0.1-sall-federated-seed0-")
    # the id is a function of the fields alone: the same fields give the same id
    assert replace(first).id == first.id


def test_cell_ids_are_distinct_and_change_with_any_field():
    cells = expand(load_preset("quick"))
    first = cells[0]

    assert len({c.id for c in cells}) == len(cells)
    for change in [
        {"rounds": 11},
        {"lr": 0.5},
        {"seed": 1},
        {"organisations": 4},
        {"dataset": "x"},
    ]:
        assert replace(first, **change).id != first.id


def test_a_torn_last_line_is_cut_and_the_complete_rows_are_kept(tmp_path, make_grid):
    cells = expand(parse_grid(make_grid(alphas=[0.1, 1.0], shots=[5, 10])))
    results = tmp_path / RESULTS_FILE
    for cell in cells[:3]:
        append_row(results, _row(cell))
    with results.open("a") as f:  # killed mid-write
        f.write(f"{cells[3].id},open_clip,fedtune-synth-c")

    assert done_ids(results) == {c.id for c in cells[:3]}
    assert repair(results) > 0
    append_row(results, _row(cells[3], 0.75))

    rows = list(csv.DictReader(results.open()))
    assert [r["cell_id"] for r in rows] == [c.id for c in cells[:4]]
    assert rows[3]["final_accuracy"] == "0.75"
    assert list(rows[0]) == COLUMNS


def test_resume_plans_only_the_cells_without_a_complete_row(tmp_path, make_grid):
    cells = expand(parse_grid(make_grid(alphas=[0.1, 1.0], shots=[5, 10])))
    results = tmp_path / RESULTS_FILE
    for cell in cells[:2]:
        append_row(results, _row(cell))
    results.write_text(results.read_text() + f"{cells[2].id},open_clip,torn")

    the_plan = plan(cells, tmp_path)

    assert [c.id for c in the_plan.done] == [c.id for c in cells[:2]]
    assert [c.id for c in the_plan.pending] == [c.id for c in cells[2:]]
    assert results.read_text().endswith("\n")  # the torn line is gone before anything appends


def test_rows_of_other_versions_without_our_columns_are_refused(tmp_path):
    results = tmp_path / RESULTS_FILE
    results.write_text("cell_id,accuracy\nx,0.5\n")

    try:
        read_rows(results)
    except ValueError as exc:
        assert "use a new --out directory" in str(exc)
    else:
        raise AssertionError("expected a ResultsError")


def test_cells_filter_matches_shell_patterns_on_ids(make_grid):
    cells = expand(parse_grid(make_grid(alphas=[0.1, 1.0])))

    local = select(cells, ["*-local-*"])

    assert local and all(c.mode == "local" for c in local)
    assert select(cells, []) == cells
