"""`fedtune-study run` end to end: a real server process, real HTTP, results, report, resume."""

from __future__ import annotations

import csv
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
import yaml
from PIL import Image

from lab.datasets import load_digits
from lab.local_federation import quiet_env, start_server
from lab.study.cells import expand
from lab.study.federated import run_federated
from lab.study.grid import parse_grid
from lab.study.shares import StudyData

pytestmark = pytest.mark.e2e

REQUIRED = [
    "family", "base", "method", "alpha", "shots", "mode", "seed", "final_accuracy",
    "best_accuracy", "rounds_to_90", "bytes_up_per_round", "bytes_down_per_round",
    "trainable_params", "wall_s",
]  # fmt: skip
VERDICTS = ("holds — ", "does not hold — ", "not measured — ")


def study_command() -> list[str]:
    script = Path(sys.executable).with_name("fedtune-study")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lab.cli"]


def study(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*study_command(), *args], env=quiet_env(), capture_output=True, text=True, timeout=timeout
    )


def test_two_cell_grid_runs_through_real_processes_and_resumes(tmp_path, make_grid, tiny_bases):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(make_grid(tiny_bases)))
    out = tmp_path / "out"

    first = study("run", "--grid", str(grid), "--out", str(out))

    assert first.returncode == 0, first.stderr
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted(r["mode"] for r in rows) == ["federated", "local"]
    for row in rows:
        assert all(row[c] != "" for c in REQUIRED), row
        assert 0.0 <= float(row["final_accuracy"]) <= 1.0
    fed = next(r for r in rows if r["mode"] == "federated")
    assert float(fed["bytes_up_per_round"]) > 0
    assert "[2/2] " in first.stdout and "aggregator: http://127.0.0.1:" in first.stdout
    summary = (out / "summary.md").read_text()
    assert len([line for line in summary.splitlines() if line.startswith(VERDICTS)]) == 3
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 4
    for png in pngs:
        with Image.open(png) as im:
            assert im.format == "PNG"

    again = study("run", "--grid", str(grid), "--out", str(out))

    assert again.returncode == 0, again.stderr
    assert "2 already in" in again.stdout and "0 to run" in again.stdout
    assert "aggregator" not in again.stdout  # nothing to run, no server started
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 2


def test_a_bad_grid_is_one_line_on_stderr_and_exit_2(tmp_path, make_grid):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(make_grid(alphas=[0.0])))

    done = study("run", "--grid", str(grid), "--out", str(tmp_path / "out"), timeout=60)

    assert done.returncode == 2
    assert done.stderr.startswith("fedtune-study: ") and "alphas" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_same_federated_cell_twice_gives_the_same_accuracy(tmp_path, make_grid, tiny_bases):
    cell = expand(parse_grid(make_grid(tiny_bases, modes=["federated"])))[0]
    data = StudyData(load_digits(), tmp_path / "data")
    torch.set_num_threads(1)
    server = start_server(tmp_path / "server", env=quiet_env(threads=1))
    try:
        first = run_federated(cell, server, data, tmp_path / "work", "cpu")
        second = run_federated(cell, server, data, tmp_path / "work", "cpu")
    finally:
        server.stop()

    assert first["round_accuracies"] == second["round_accuracies"]
    assert first["final_accuracy"] == second["final_accuracy"]


def _wait_for_rows(path: Path, n: int, proc: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.read_text().count("\n") >= n + 1:  # header + n rows
            return
        time.sleep(0.2)
    raise AssertionError(f"no {n} row(s) in {path} within {timeout} s")


def test_killed_mid_study_stops_its_server_and_a_restart_runs_only_the_rest(
    tmp_path, make_grid, tiny_bases
):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(make_grid(tiny_bases, shots=[5, 10])))
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [*study_command(), "run", "--grid", str(grid), "--out", str(out)],
        env=quiet_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for_rows(out / "results.csv", 1, proc, timeout=150)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    url = re.search(r"aggregator: (http://127\.0\.0\.1:\d+)", stdout).group(1)  # type: ignore[union-attr]
    kept = (out / "results.csv").read_text().splitlines()[1:]

    assert proc.returncode == 130 and "run the same command again to resume" in stderr
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)

    again = study("run", "--grid", str(grid), "--out", str(out))

    assert again.returncode == 0, again.stderr
    assert f"{len(kept)} already in" in again.stdout
    rows = (out / "results.csv").read_text().splitlines()[1:]
    assert rows[: len(kept)] == kept and len(rows) == 4
