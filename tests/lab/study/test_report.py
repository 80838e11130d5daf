"""summary.md and the plots, drawn from a results.csv alone; the findings' tests on known rows."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from PIL import Image

from lab.study.cells import Cell, expand
from lab.study.findings import finding_bias, finding_clip_vs_vit, finding_federated
from lab.study.grid import parse_grid
from lab.study.report import write_report
from lab.study.results import RESULTS_FILE, append_row
from lab.study.rows import load_results

VERDICTS = ("holds — ", "does not hold — ", "not measured — ")


def _write(out, cells: list[Cell], accuracy: Callable[[Cell], float]) -> None:
    for cell in cells:
        acc = accuracy(cell)
        local = cell.mode == "local"
        append_row(
            out / RESULTS_FILE,
            {
                "cell_id": cell.id,
                **cell.fields(),
                "final_accuracy": acc,
                "final_accuracy_std": 0.05 if local else None,
                "final_accuracy_min": acc - 0.05 if local else None,
                "final_accuracy_max": acc + 0.05 if local else None,
                "best_accuracy": acc,
                "rounds_to_90": 1,
                "round_accuracies": [0.1, acc * 0.8, acc],
                "bytes_up_per_round": 0 if local else 1000 * (50 if cell.method == "full" else 1),
                "bytes_down_per_round": 0 if local else 1500,
                "trainable_params": 100,
                "wall_s": 2.0,
            },
        )


def _cells(make_grid) -> list[Cell]:
    grid = make_grid(
        families=["open_clip", "hf_vit"],
        methods=["full", "bias", "lora"],
        bases=["pretrained", "random"],
        models={
            "open_clip": {"arch": "fedtune-synth-clip", "pretrained": "fedtune-synth-v1"},
            "hf_vit": {"arch": "fedtune-tiny-vit", "pretrained": "fedtune-synth-v1"},
        },
        shots=["all"],
        sweeps=[
            {"name": "main"},
            {
                "methods": ["bias", "lora"],
                "bases": ["pretrained"],
                "alphas": [0.1, 1.0],
                "shots": ["all", 10],
            },
        ],
    )
    return expand(parse_grid(grid))


def paper_like(cell: Cell) -> float:
    """Rows in which all three findings are true by construction."""
    acc = {"full": 0.80, "bias": 0.90, "lora": 0.85}[cell.method]
    if cell.base == "random":
        acc -= {"full": 0.10, "bias": 0.50, "lora": 0.30}[cell.method]
    if cell.family == "hf_vit":
        acc -= 0.05 + (0.20 if cell.shots == 10 else 0.0)
    elif cell.shots == 10:
        acc -= 0.05
    if cell.mode == "local":
        acc -= 0.15
    return acc


def test_summary_has_the_tables_and_three_findings_lines(tmp_path, make_grid):
    _write(tmp_path, _cells(make_grid), paper_like)

    written = write_report(tmp_path)

    summary = (tmp_path / "summary.md").read_text()
    for heading in [
        "## Method × family (federated, α=0.1, shots=all)",
        "## Federated vs local (α=0.1, shots=all)",
        "## Accuracy vs shots per class (pre-trained base)",
        "## Accuracy vs Dirichlet α (pre-trained base)",
        "## Findings",
    ]:
        assert heading in summary
    assert "| bias | 90.0 | 40.0 | +50.0 |" in summary
    findings = [line for line in summary.splitlines() if line.startswith(VERDICTS)]
    assert len(findings) == 3
    assert all(line.startswith("holds — ") for line in findings)
    assert [p.name for p in written[1:]] == [
        "accuracy_per_round.png", "accuracy_vs_bytes.png", "federated_vs_local.png",
        "accuracy_vs_shots.png",
    ]  # fmt: skip


def test_plots_are_valid_png_images(tmp_path, make_grid):
    _write(tmp_path, _cells(make_grid), paper_like)

    for path in write_report(tmp_path)[1:]:
        with Image.open(path) as im:
            im.verify()
            assert im.format == "PNG"


def test_findings_say_does_not_hold_when_the_numbers_go_the_other_way(tmp_path, make_grid):
    def reversed_(cell: Cell) -> float:
        acc = 1.0 - paper_like(cell)
        return min(max(acc, 0.0), 1.0)

    _write(tmp_path, _cells(make_grid), reversed_)
    results = load_results(tmp_path)

    assert finding_bias(results).startswith("does not hold — ")
    assert finding_clip_vs_vit(results).startswith("does not hold — ")
    assert finding_federated(results).startswith("does not hold — ")


def test_bias_gain_under_ten_points_does_not_hold_even_when_it_is_the_largest(tmp_path, make_grid):
    def small_gains(cell: Cell) -> float:
        return 0.5 + (0.05 if cell.base == "pretrained" and cell.method == "bias" else 0.0)

    _write(tmp_path, _cells(make_grid), small_gains)

    assert finding_bias(load_results(tmp_path)).startswith("does not hold — ")


def test_findings_without_the_cells_they_need_are_not_measured(tmp_path, make_grid):
    cells = [c for c in _cells(make_grid) if c.family == "open_clip" and c.mode == "federated"]
    cells = [c for c in cells if c.base == "pretrained"]
    _write(tmp_path, cells, paper_like)
    results = load_results(tmp_path)

    for finding in (finding_bias, finding_clip_vs_vit, finding_federated):
        assert finding(results).startswith("not measured — ")


def test_report_of_an_empty_results_file_says_so(tmp_path):
    (tmp_path / RESULTS_FILE).write_text("")

    assert write_report(tmp_path) == [tmp_path / "summary.md"]
    assert "No results yet" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize("later", [0.3, 0.7])
def test_a_setting_run_twice_counts_its_later_row(tmp_path, make_grid, later):
    cells = _cells(make_grid)[:1]
    _write(tmp_path, cells, lambda c: 0.5)
    rerun = [c.__class__(**{**c.__dict__, "rounds": 5}) for c in cells]
    _write(tmp_path, rerun, lambda c: later)

    (only,) = load_results(tmp_path)
    assert only.final == later
