"""Specs for the tiny FedTune configs, shared by the tuning tests."""

from __future__ import annotations

from typing import Any

from shared.spec import FederationSpec, parse_spec

TINY = {"open_clip": "fedtune-tiny-clip", "hf_vit": "fedtune-tiny-vit"}
DIGITS = [str(i) for i in range(10)]


def tiny_spec(
    family: str,
    method: str,
    options: dict[str, Any] | None = None,
    *,
    train_head: bool = False,
    seed: int = 0,
    arch: str | None = None,
    pretrained: str | None = None,
) -> FederationSpec:
    return parse_spec(
        {
            "name": f"tiny-{family}-{method}",
            "model": {"family": family, "arch": arch or TINY[family], "pretrained": pretrained},
            "task": {"classes": DIGITS, "prompt_template": "a photo of the digit {}."},
            "method": {"name": method, "train_head": train_head, "options": options or {}},
            "seed": seed,
        }
    )
