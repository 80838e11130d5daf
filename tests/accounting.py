"""The reference ε: Opacus's RDP accountant called directly."""

from __future__ import annotations

from collections.abc import Sequence

from opacus.accountants import RDPAccountant


def rdp_epsilon(sigma: float, rates: Sequence[float], delta: float) -> float:
    """ε after one Gaussian step of noise multiplier `sigma` per sample rate in `rates`."""
    acc = RDPAccountant()
    for q in rates:
        acc.step(noise_multiplier=sigma, sample_rate=q)
    return float(acc.get_epsilon(delta=delta))
