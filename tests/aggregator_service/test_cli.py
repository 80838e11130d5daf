"""`fedtune-server` offline commands, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aggregator_service.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_create_federation_then_enroll_offline(tmp_path, capsys):
    data = str(tmp_path / "data")

    assert (
        main(
            [
                "create-federation",
                "--data-dir",
                data,
                "--spec",
                str(EXAMPLES / "tiny-clip-bias.yaml"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    fid = out[0]
    info = json.loads("\n".join(out[1:]))
    assert main(["enroll", "--data-dir", data, "--federation", fid, "--uses", "2"]) == 0
    token = capsys.readouterr().out.strip()

    assert fid.startswith("fed_") and info["id"] == fid and info["current_round"] == 1
    assert token.startswith("fte_")


def test_methods_json_lists_reports(capsys):
    assert main(["methods", "--spec", str(EXAMPLES / "tiny-clip-bias.yaml"), "--json"]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert {"method", "trainable_params", "bytes_per_update"} <= set(reports[0])


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (
            ["create-federation", "--data-dir", "{tmp}", "--spec", "{tmp}/missing.yaml"],
            "cannot read spec",
        ),
        (["enroll", "--data-dir", "{tmp}", "--federation", "fed_nope"], "no federation"),
        (["enroll", "--data-dir", "{tmp}", "--federation", "fed_x", "--uses", "0"], "uses"),
        (
            [
                "serve",
                "--data-dir",
                "{tmp}",
                "--ssl-certfile",
                "{tmp}/none.pem",
                "--ssl-keyfile",
                "{tmp}/none.pem",
            ],
            "no such file",
        ),
        (["serve", "--data-dir", "{tmp}", "--port", "99999"], "port"),
        (["serve", "--data-dir", "{tmp}", "--max-json-kb", "0"], "max_json_kb"),
        (["serve", "--data-dir", "{tmp}", "--header-timeout-s", "-1"], "header_timeout_s"),
        (["serve", "--data-dir", "{tmp}", "--shutdown-timeout-s", "0"], "shutdown_timeout_s"),
        (["serve", "--data-dir", "{tmp}", "--host", "0.0.0.0"], "refusing plain HTTP on 0.0.0.0"),
        (["serve", "--data-dir", "{tmp}", "--host", "::"], "--insecure-http"),
        (["serve", "--data-dir", "{tmp}", "--host", "10.1.2.3"], "--ssl-certfile"),
        (["serve", "--data-dir", "{tmp}", "--host", "agg.example.org"], "plain HTTP"),
        (["serve", "--data-dir", "{tmp}", "--metrics-token-file", "{tmp}/none"], "metrics token"),
    ],
)
def test_bad_input_is_one_line_on_stderr_with_status_2(tmp_path, capsys, argv, fragment):
    code = main([a.format(tmp=tmp_path) for a in argv])

    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and fragment in err and "Traceback" not in err


def test_installed_command_reports_bad_spec_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nmodel: {family: open_clip, arch: a}\ntask: {classes: [a]}\nmethod: {name: nope}\n"
    )
    cmd = [str(Path(sys.executable).with_name("fedtune-server")), "methods", "--spec", str(bad)]

    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "method.name" in proc.stderr
