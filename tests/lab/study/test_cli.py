"""`fedtune-study run --dry-run` and the CLI's one-line errors (in-process, nothing is trained)."""

from __future__ import annotations

import pytest

from lab.cli import main


def test_paper_preset_dry_run_lists_its_cells_without_a_dataset(tmp_path, capsys):
    code = main(["run", "--preset", "paper", "--out", str(tmp_path), "--dry-run"])

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    cells = [line for line in out if line.startswith("pending  ")]
    assert len(cells) > 100
    assert any("open_clip pretrained text_prompt α=iid shots=1 federated" in c for c in cells)
    assert out[-1].endswith(f"0 done, {len(cells)} to run")


def test_quick_preset_dry_run_counts_its_cells(tmp_path, capsys):
    assert main(["run", "--preset", "quick", "--out", str(tmp_path), "--dry-run"]) == 0

    assert capsys.readouterr().out.splitlines()[-1] == (
        "76 cells (38 federated, 38 local): 0 done, 76 to run"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--preset", "paper", "--out", "{out}"], "dataset: grid paper names none"),
        (["run", "--preset", "quick", "--out", "{out}", "--cells", "nope*"], "--cells: no cell id"),
        (["run", "--preset", "quick", "--out", "{out}", "--dataset", "{out}/absent"], "--dataset"),
        (["run", "--grid", "{out}/absent.yaml", "--out", "{out}"], "cannot read grid file"),
        (["report", "--out", "{out}"], "--out: no results.csv"),
    ],
)
def test_errors_are_one_line_on_stderr_with_exit_status_2(tmp_path, capsys, argv, message):
    code = main([a.replace("{out}", str(tmp_path)) for a in argv])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("fedtune-study: ") and message in err
    assert len(err.strip().splitlines()) == 1
