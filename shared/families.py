"""The model families a spec may name; `shared.models` holds a builder for each."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["FAMILY_NAMES", "Family"]

Family = Literal["open_clip", "hf_vit"]
FAMILY_NAMES: tuple[Family, ...] = get_args(Family)
