"""`fedtune-study build-base` and `fedtune-study bases`."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from lab.bases import cli
from lab.bases.build import build_base_to
from shared.models.synthetic import find_base
from tests.lab.bases.tiny import ARCHS, TAG, tiny_base


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fedtune-study")
    cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


def test_bases_lists_every_registered_base_and_whether_it_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FEDTUNE_CACHE_DIR", str(tmp_path))
    vit = find_base(ARCHS["hf_vit"], TAG)
    assert vit is not None
    build_base_to(tiny_base("hf_vit"), vit.directory(), log=None)

    assert _run(["bases"]) == 0

    out = capsys.readouterr().out
    assert f"{ARCHS['open_clip']} : {TAG}" in out and f"{ARCHS['hf_vit']} : {TAG}" in out
    assert "not built; fedtune-study build-base --arch fedtune-synth-clip" in out
    assert f"built: {vit.weights_path()}" in out and "held-out accuracy" in out


def test_build_base_of_an_unknown_base_is_one_line_on_stderr_and_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _run(["build-base", "--arch", "fedtune-synth-clip", "--tag", "nope"]) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fedtune-study: ")
    assert f"--arch fedtune-synth-clip --tag {TAG}" in err


def test_build_base_of_a_built_base_does_not_build_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FEDTUNE_CACHE_DIR", str(tmp_path))
    vit = find_base(ARCHS["hf_vit"], TAG)
    assert vit is not None
    build_base_to(tiny_base("hf_vit"), vit.directory(), log=None)
    stamp = (vit.directory() / "model.safetensors").stat().st_mtime_ns

    assert _run(["build-base", "--arch", ARCHS["hf_vit"], "--tag", TAG]) == 0

    assert "already built" in capsys.readouterr().out
    assert (vit.directory() / "model.safetensors").stat().st_mtime_ns == stamp
