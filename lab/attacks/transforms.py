"""What an attacking organisation sends instead of its honest delta Δ.

- `sign_flip`: -k·Δ, the honest direction reversed and scaled (k = `factor`, 10 by default;
  k = 1 is the plain flip);
- `scale`: k·Δ, the honest direction exaggerated (boosting, as in model replacement);
- `gaussian`: noise from N(0, 1) rescaled to Δ's L2 norm (whole delta, every tensor), so a
  norm bound cannot tell it from an honest update; `factor` does not apply.

Each tensor keeps its name, shape and dtype (the spec's transport dtype); the arithmetic
runs in float32. The noise is drawn from the generator given, tensors in name order, so a
poisoned round is a function of the seed the caller derives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = ["ATTACK_NAMES", "Attack"]

ATTACK_NAMES = ("sign_flip", "scale", "gaussian")


@dataclass(frozen=True)
class Attack:
    """One attack: its name (`ATTACK_NAMES`) and, for sign_flip and scale, the factor k."""

    name: str
    factor: float = 10.0

    def __post_init__(self) -> None:
        if self.name not in ATTACK_NAMES:
            raise ValueError(f"attack: unknown {self.name!r}; known: {', '.join(ATTACK_NAMES)}")
        if not (math.isfinite(self.factor) and self.factor > 0):
            raise ValueError(f"attack: factor must be a positive number, not {self.factor}")

    @property
    def label(self) -> str:
        """How tables name it: sign_flip x-10, scale x10, gaussian."""
        if self.name == "sign_flip":
            return f"sign_flip x-{self.factor:g}"
        if self.name == "scale":
            return f"scale x{self.factor:g}"
        return self.name

    def apply(
        self, delta: Mapping[str, torch.Tensor], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """The poisoned delta (new tensors; `delta` is left as it was)."""
        names = sorted(delta)
        if self.name == "gaussian":
            return _matched_noise(delta, names, generator)
        k = -self.factor if self.name == "sign_flip" else self.factor
        return {n: (delta[n].to(torch.float32) * k).to(delta[n].dtype) for n in names}


def l2_norm(delta: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of a whole delta, accumulated in float64."""
    return math.sqrt(sum(float(t.to(torch.float64).pow(2).sum()) for t in delta.values()))


def _matched_noise(
    delta: Mapping[str, torch.Tensor], names: list[str], generator: torch.Generator
) -> dict[str, torch.Tensor]:
    noise = {
        n: torch.randn(delta[n].shape, generator=generator, dtype=torch.float32) for n in names
    }
    target, drawn = l2_norm(delta), l2_norm(noise)
    scale = target / drawn if drawn > 0 else 0.0
    return {n: (noise[n] * scale).to(delta[n].dtype) for n in names}
