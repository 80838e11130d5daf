"""`fedtune-server methods --spec FILE [--json]`, run as a real process, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVER = Path(sys.executable).parent / "fedtune-server"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [str(SERVER), "methods", *args], capture_output=True, text=True, env=env, timeout=300
    )


def _offline_copy(tmp_path: Path, example: str) -> Path:
    data = yaml.safe_load((ROOT / "examples" / example).read_text())
    data["model"]["pretrained"] = None
    path = tmp_path / example
    path.write_text(yaml.safe_dump(data))
    return path


def test_methods_json_reports_vit_b16_counts_offline(tmp_path: Path) -> None:
    result = _run("--spec", str(_offline_copy(tmp_path, "vit-b16-in21k-lora.yaml")), "--json")
    assert result.returncode == 0, result.stderr
    reports = {r["method"]: r for r in json.loads(result.stdout) if not r["variant"]}
    assert reports["bias"]["trainable_params"] == 102_912
    assert reports["lora"]["trainable_params"] == 294_912
    assert "text_prompt" not in reports


def test_methods_json_reports_the_option_variants_for_vit_b16(tmp_path: Path) -> None:
    result = _run("--spec", str(_offline_copy(tmp_path, "vit-b16-in21k-lora.yaml")), "--json")
    assert result.returncode == 0, result.stderr
    variants = {(r["method"], r["variant"]): r for r in json.loads(result.stdout) if r["variant"]}

    # freeze_a trains B alone: half of LoRA's A and B on 12 blocks of width 768, r = 8
    assert variants["lora", "freeze_a=true"]["trainable_params"] == 147_456
    # 12 blocks x adapters x (2 w d + d + w), d = 768: Houlsby two adapters of width 64,
    # Pfeiffer one of width 768 / 16 = 48
    assert variants["adapter", "style=houlsby"]["trainable_params"] == 12 * 2 * (
        2 * 64 * 768 + 768 + 64
    )
    assert variants["adapter", "style=pfeiffer"]["trainable_params"] == 12 * (
        2 * 48 * 768 + 768 + 48
    )


def test_methods_json_reports_the_option_variants_for_clip_vit_b32(tmp_path: Path) -> None:
    result = _run("--spec", str(_offline_copy(tmp_path, "clip-vit-b32-bias.yaml")), "--json")
    assert result.returncode == 0, result.stderr
    rows = {(r["method"], r["variant"]): r["trainable_params"] for r in json.loads(result.stdout)}

    # The image tower is 12 blocks of width 768, as in ViT-B/16, so the same counts
    assert rows["lora", "freeze_a=true"] == rows["lora", ""] // 2 == 147_456
    assert rows["adapter", "style=houlsby"] == 12 * 2 * (2 * 64 * 768 + 768 + 64)
    assert rows["adapter", "style=pfeiffer"] == 12 * (2 * 48 * 768 + 768 + 48)
    # CoOp: 16 context vectors of the text tower's width 512
    assert rows["text_prompt", ""] == 16 * 512


def test_methods_prints_a_table_for_the_tiny_clip(tmp_path: Path) -> None:
    result = _run("--spec", str(ROOT / "examples" / "tiny-clip-bias.yaml"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[0] == "method"
    assert {line.split()[0] for line in lines[1:]} >= {"bias", "lora", "text_prompt"}


def test_invalid_spec_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "examples" / "tiny-vit-lora.yaml").read_text())
    data["method"]["name"] = "text_prompt"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))

    result = _run("--spec", str(path), "--json")

    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "text_prompt" in result.stderr and "Traceback" not in result.stderr


def test_invalid_method_option_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "examples" / "tiny-vit-lora.yaml").read_text())
    data["method"]["options"] = {"rank": 8}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))

    result = _run("--spec", str(path))

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fedtune-server: method.options.rank: Extra inputs are not permitted (method lora)"
    ]
