"""Differential privacy in a spec: the service's central Gaussian mechanism, client DP-SGD,
and the accountant both sides use.

Two independent guarantees, either or both in one federation:

- `privacy` (central DP, McMahan, Ramage, Talwar, Zhang, "Learning Differentially
  Private Recurrent Language Models", ICLR 2018): the service clips every update to
  `clip_norm`, sums the round's updates with uniform weights, adds Gaussian noise of
  std `noise_multiplier x clip_norm` to the sum and divides by a fixed denominator (the
  round's quorum). The unit of privacy is a participant: the released global states
  do not let anyone single out one organisation's contribution. It trusts the operator,
  who sees the updates before the noise.
- `local_training.dp` (DP-SGD, Abadi et al., "Deep Learning with Differential Privacy",
  CCS 2016): each organisation clips every example's gradient and adds noise before each
  local step, so its update is private with respect to any one of its examples before it
  leaves the machine. It trusts nobody, and costs accuracy.

ε comes from Opacus's accountants (Rényi DP by default, or the PRV accountant), never
from formulas of our own: see `epsilon`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from shared.spec import FederationSpec

__all__ = [
    "DP_SGD_REFUSED",
    "DP_STRATEGIES",
    "Accountant",
    "CentralPrivacySpec",
    "LocalDPSpec",
    "NoiseSource",
    "check_privacy",
    "epsilon",
]

# Strategies whose step is a function of the round's mean delta: the noisy mean replaces it
# and the server optimiser's state only post-processes it (no extra privacy cost). Median,
# trimmed mean and Krum select or rank individual updates: their output is not a sum with a
# bounded sensitivity, and Gaussian noise on it proves nothing.
DP_STRATEGIES = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad")

Accountant = Literal["rdp", "prv"]
# Where the Gaussian noise comes from. seeded: a generator seeded from the spec, so anyone who
# knows the spec can regenerate the noise and subtract it (tests and research); system: a seed
# or the draws from the operating system's CSPRNG, known to nobody.
NoiseSource = Literal["seeded", "system"]

# Methods whose trainable tensors DP-SGD's per-example gradients cannot reach, and why.
DP_SGD_REFUSED = {
    "vpt": "its prompts enter through forward hooks that hold the tensor itself, which "
    "per-example gradients (torch.func over the model's parameters) cannot reach",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CentralPrivacySpec(_Strict):
    """Central DP at the service: clip, sum, add Gaussian noise, divide by the quorum."""

    mechanism: Literal["central_gaussian"] = Field(
        description="central_gaussian: the Gaussian mechanism on the sum of clipped updates."
    )
    clip_norm: float = Field(
        gt=0,
        description="L2 bound of every update (the sum's sensitivity); sets aggregation.clip_norm.",
    )
    noise_multiplier: float = Field(
        gt=0, le=1000, description="Noise std on the sum, in units of clip_norm."
    )
    delta: float = Field(gt=0, lt=1, description="δ of the (ε, δ) guarantee.")
    max_epsilon: float = Field(
        gt=0,
        description="The federation completes before a round would take ε past this.",
    )
    accountant: Accountant = Field(
        default="rdp", description="Opacus accountant: rdp (Rényi DP) or prv (PRV)."
    )
    amplification: bool = Field(
        default=False,
        description="Account each round with sample rate participants / enrolled clients "
        "(privacy amplification by subsampling). Sound only when the participants of a round "
        "are a uniformly random subset of the enrolled clients; false (the default) accounts "
        "every round at sample rate 1.",
    )
    noise_source: NoiseSource = Field(
        default="system",
        description="system: the noise is drawn from the operating system's CSPRNG; seeded: "
        "from a generator seeded by the spec's seed, the federation and the round (reproducible, "
        "but every member knows the seed and can subtract the noise: tests and research only).",
    )


class LocalDPSpec(_Strict):
    """Client DP-SGD: per-example gradient clipping and Gaussian noise on every local step."""

    noise_multiplier: float = Field(
        gt=0, le=1000, description="Noise std on the summed batch gradient, in max_grad_norm."
    )
    max_grad_norm: float = Field(gt=0, description="L2 bound of every example's gradient.")
    delta: float = Field(gt=0, lt=1, description="δ of each organisation's (ε, δ) guarantee.")
    accountant: Accountant = Field(
        default="rdp", description="Opacus accountant: rdp (Rényi DP) or prv (PRV)."
    )
    noise_source: NoiseSource = Field(
        default="system",
        description="system: each round's noise comes from a generator under a fresh secret "
        "seed from the operating system's CSPRNG, with Opacus's secure_mode; seeded: from "
        "local training's seed (reproducible, but the service and every member know it and "
        "can subtract the noise: tests and research only).",
    )


def epsilon(
    noise_multiplier: float,
    sample_rates: Sequence[float],
    delta: float,
    accountant: Accountant = "rdp",
    steps_each: int = 1,
) -> float:
    """ε after one Gaussian-mechanism step per entry of `sample_rates` (each repeated
    `steps_each` times), from Opacus's accountant; 0.0 for no step."""
    if not sample_rates or steps_each <= 0:
        return 0.0
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = PRVAccountant() if accountant == "prv" else RDPAccountant()
    history: list[tuple[float, float, int]] = []
    for q in sample_rates:
        if history and history[-1][1] == q:
            history[-1] = (noise_multiplier, q, history[-1][2] + steps_each)
        else:
            history.append((noise_multiplier, q, steps_each))
    acc.history = history
    return float(acc.get_epsilon(delta=delta))


def check_privacy(spec: FederationSpec) -> None:
    """Refuse, in one line naming the field, privacy settings that cannot hold (ValueError)."""
    why = DP_SGD_REFUSED.get(spec.method.name)
    if spec.local_training.dp is not None and why is not None:
        raise ValueError(
            f"local_training.dp does not work with method.name {spec.method.name}: {why}; "
            "choose another method or train without dp"
        )
    p = spec.privacy
    if p is None:
        return
    if spec.secure_aggregation is not None:
        raise ValueError(
            "privacy: central_gaussian clips and sums single updates at the service, which "
            "secure_aggregation hides from it; use one of them (or local_training.dp with "
            "secure_aggregation)"
        )
    agg = spec.aggregation
    if agg.strategy not in DP_STRATEGIES:
        raise ValueError(
            f"privacy: central_gaussian needs an averaging strategy ({', '.join(DP_STRATEGIES)}); "
            f"aggregation.strategy {agg.strategy} selects or ranks updates, so the noise would "
            "bound nothing"
        )
    if agg.clip_norm != p.clip_norm:
        set_to = "null" if agg.clip_norm is None else agg.clip_norm
        raise ValueError(
            f"aggregation.clip_norm ({set_to}) contradicts privacy.clip_norm ({p.clip_norm}): "
            "leave aggregation.clip_norm out (privacy sets it) or give the same value"
        )
    if agg.weighting != "uniform":
        raise ValueError(
            f"aggregation.weighting: privacy averages with uniform weights over a fixed "
            f"denominator ({agg.weighting} would break the sensitivity bound); leave it out "
            "or set uniform"
        )
    first = epsilon(p.noise_multiplier, [1.0], p.delta, p.accountant)
    if first > p.max_epsilon:
        raise ValueError(
            f"privacy.max_epsilon ({p.max_epsilon:g}) is below the ε of a single round "
            f"({first:.3g} at noise_multiplier {p.noise_multiplier:g}, delta {p.delta:g}): "
            "raise max_epsilon or noise_multiplier"
        )
