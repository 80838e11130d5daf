"""Central differential privacy: the Gaussian mechanism on a round's sum, and its accounting.

The mechanism (McMahan, Ramage, Talwar, Zhang, ICLR 2018, "DP-FedAvg" with a fixed
denominator). For a round with participants k = 1..n:

    mean = (Σ_k s_k Δ_k + N(0, σ² C² I)) / D,     s_k = min(1, C / ‖Δ_k‖),  D = rounds.quorum

Why it is private (the unit is one participant, add/remove adjacency): every clipped term
has norm at most C and enters with weight 1, so adding or removing one participant moves the
sum by at most C in L2: the sum's sensitivity is C, and noise of std σC makes it the Gaussian
mechanism with noise multiplier σ. Dividing by D, a constant of the spec, and everything the
strategy does afterwards (FedAvg adds it to the state; FedAvgM, FedAdam, FedYogi, FedAdagrad
feed it to a server optimiser) is post-processing, which costs nothing. Example-count weights
would break this (one participant claiming many examples moves the sum by more than C), so
the weights are uniform whatever `aggregation.weighting` says, and the denominator is the
quorum rather than the round's n (n itself is data: it changes with the participant). A round
never holds more than its quorum (it starts aggregating in the transaction that accepts the
quorum-reaching update); one that closes at its deadline with fewer is shrunk towards the
current state, never amplified.

Accounting: each round is one step of the (subsampled) Gaussian mechanism, composed by
Opacus's accountant (`shared.privacy.epsilon`). Who takes part in a round is whoever trains
fastest, not a random draw, so privacy amplification by subsampling does not hold in general:
by default every round is accounted at sample rate 1. `privacy.amplification: true` accounts
round r at q_r = (its participants) / (clients enrolled and not revoked), capped at 1, for
deployments that make participation a uniform random draw. Before the next round opens, the ε
it would reach (at q = quorum / enrolled, capped at 1, with amplification; else 1) is computed;
past `max_epsilon`, the federation completes instead (`completions.reason = privacy_budget`).
A single round's ε at q = 1 is checked against max_epsilon when the spec is parsed, so no
round ever takes the federation past it.

Noise source: `seeded` draws from a torch generator seeded by the spec's seed, name and the
round (reproducible, like everything else in FedTune, and recomputed bit for bit when a round
is aggregated again after a crash). Anyone who knows the seed can regenerate and subtract the
noise: a production deployment sets `noise_source: system`, which draws it from the operating
system's CSPRNG (a crash between aggregation and close then publishes a fresh draw; only one
draw is ever published for a round).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sqlalchemy import Connection, func, insert, select

from aggregator_service.aggregation import MemoryDeltas, UpdateInput, get_strategy
from aggregator_service.aggregation.base import AggregationResult, Contributions
from aggregator_service.aggregation.deltas import BlobDeltas, Deltas
from aggregator_service.services.context import Core
from aggregator_service.storage.tables import clients, completions, privacy_ledger
from shared.privacy import CentralPrivacySpec, epsilon
from shared.spec import AggregationSpec, FederationSpec

__all__ = [
    "PrivateAggregator",
    "RoundAccount",
    "account_round",
    "completed_reason",
    "current_epsilons",
    "epsilons",
    "noise_seed",
    "noisy_mean",
    "record_budget_completion",
    "record_round",
]

log = logging.getLogger("fedtune.server")

BUDGET_REASON = "privacy_budget"


def noise_seed(spec: FederationSpec, round: int) -> int:
    """The seed of round `round`'s noise: the same for every run of the same spec."""
    text = ":".join(("fedtune", "privacy", str(spec.seed), spec.name, str(round)))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def _system_normal(shape: torch.Size) -> torch.Tensor:
    """Standard normal draws from the OS CSPRNG (Box-Muller over 53-bit uniforms)."""
    n = math.prod(shape)
    k = (n + 1) // 2
    bits = np.frombuffer(os.urandom(16 * k), dtype="<u8").reshape(2, k)
    u1 = ((bits[0] >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53  # (0, 1]
    u2 = (bits[1] >> np.uint64(11)).astype(np.float64) * 2.0**-53
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])[:n]
    return torch.from_numpy(z.astype(np.float32)).reshape(shape)


def noisy_mean(
    global_state: Mapping[str, torch.Tensor],
    deltas: Deltas,
    privacy: CentralPrivacySpec,
    denominator: int,
    generator: torch.Generator | None,
) -> dict[str, torch.Tensor]:
    """(Σ_k clip(Δ_k) + N(0, (σC)²)) / D per tensor, float32, tensors in name order.

    `generator` None draws the noise from the OS CSPRNG instead.
    """
    plain = AggregationSpec(strategy="fedavg", weighting="uniform", clip_norm=privacy.clip_norm)
    contributions = Contributions(deltas, plain)
    contributions.weights = [1.0 / denominator] * len(contributions)
    std = privacy.noise_multiplier * privacy.clip_norm / denominator
    out: dict[str, torch.Tensor] = {}
    for name, old, mean in contributions.means(global_state):
        if generator is None:
            noise = _system_normal(old.shape)
        else:
            noise = torch.randn(old.shape, generator=generator, dtype=torch.float32)
        out[name] = mean.add_(noise, alpha=std)
    return out


class PrivateAggregator:
    """`aggregate` for a federation with `privacy`: the noisy mean of the round, handed to
    the spec's strategy as the round's one averaged delta (clip and weights already applied)."""

    def __init__(self, spec: FederationSpec, round: int) -> None:
        assert spec.privacy is not None
        self.spec, self.privacy, self.round = spec, spec.privacy, round

    def __call__(
        self,
        global_state: Mapping[str, torch.Tensor],
        updates: Sequence[UpdateInput],
        spec: AggregationSpec,
        server_state: Mapping[str, torch.Tensor],
    ) -> AggregationResult:
        generator = None
        if self.privacy.noise_source == "seeded":
            generator = torch.Generator().manual_seed(noise_seed(self.spec, self.round))
        mean = noisy_mean(
            global_state,
            BlobDeltas(updates),
            self.privacy,
            self.spec.rounds.quorum,
            generator,
        )
        as_one = spec.model_copy(update={"clip_norm": None, "weighting": "uniform"})
        strategy = get_strategy(spec.strategy)
        return strategy(global_state, MemoryDeltas([("dp-mean", mean, 1)]), as_one, server_state)


def _enrolled(conn: Connection, fid: str) -> int:
    count: int = conn.execute(
        select(func.count())
        .select_from(clients)
        .where(clients.c.federation_id == fid, clients.c.revoked.is_(False))
    ).scalar_one()
    return count


def _rate(privacy: CentralPrivacySpec, participants: int, enrolled: int) -> float:
    if not privacy.amplification or enrolled <= 0:
        return 1.0
    return min(1.0, participants / enrolled)


@dataclass(frozen=True)
class RoundAccount:
    """A closing round's sample rate and ε, and whether the budget is spent."""

    sample_rate: float
    epsilon: float
    exhausted: bool  # the next round would take ε past max_epsilon: the federation completes


def account_round(
    core: Core, spec: FederationSpec, fid: str, number: int, participants: int
) -> RoundAccount | None:
    """Round `number`'s ε once `participants` updates are in its aggregate; None without
    `privacy`. Computed before the closing transaction: the accountant takes seconds over a
    long history, and the transaction holds the write lock."""
    p = spec.privacy
    if p is None:
        return None
    with core.db.read() as conn:
        enrolled = _enrolled(conn, fid)
        rates = list(
            conn.execute(
                select(privacy_ledger.c.sample_rate)
                .where(privacy_ledger.c.federation_id == fid, privacy_ledger.c.round < number)
                .order_by(privacy_ledger.c.round)
            ).scalars()
        )
    rates.append(_rate(p, participants, enrolled))
    eps = epsilon(p.noise_multiplier, rates, p.delta, p.accountant)
    if number >= spec.rounds.total:
        return RoundAccount(rates[-1], eps, exhausted=False)
    projected = epsilon(
        p.noise_multiplier, [*rates, _rate(p, spec.rounds.quorum, enrolled)], p.delta, p.accountant
    )
    exhausted = projected > p.max_epsilon
    if exhausted:
        log.info(
            "federation %s: ε %.3f after round %d; round %d would reach %.3f > max_epsilon %g: "
            "the federation completes",
            fid,
            eps,
            number,
            number + 1,
            projected,
            p.max_epsilon,
        )
    return RoundAccount(rates[-1], eps, exhausted)


def record_round(conn: Connection, fid: str, number: int, account: RoundAccount | None) -> bool:
    """Record the round's account in the closing transaction; True when the budget is spent."""
    if account is None:
        return False
    conn.execute(
        insert(privacy_ledger).values(
            federation_id=fid,
            round=number,
            sample_rate=account.sample_rate,
            epsilon=account.epsilon,
        )
    )
    return account.exhausted


def record_budget_completion(conn: Connection, fid: str, number: int) -> None:
    conn.execute(insert(completions).values(federation_id=fid, round=number, reason=BUDGET_REASON))


def epsilons(conn: Connection, fid: str) -> dict[int, float]:
    """Round -> ε after it, for the closed rounds of a federation with `privacy`."""
    rows = conn.execute(
        select(privacy_ledger.c.round, privacy_ledger.c.epsilon).where(
            privacy_ledger.c.federation_id == fid
        )
    ).all()
    return {r.round: r.epsilon for r in rows}


def completed_reason(conn: Connection, fid: str, status: str) -> str | None:
    """Why a completed federation completed: privacy_budget, or rounds (its last round)."""
    if status != "completed":
        return None
    reason: str | None = conn.execute(
        select(completions.c.reason).where(completions.c.federation_id == fid)
    ).scalar()
    return reason or "rounds"


def current_epsilons(core: Core) -> dict[str, float]:
    """Federation id -> ε after its latest closed round (federations with `privacy`)."""
    latest = (
        select(privacy_ledger.c.federation_id, func.max(privacy_ledger.c.round).label("round"))
        .group_by(privacy_ledger.c.federation_id)
        .subquery()
    )
    with core.db.read() as conn:
        rows = conn.execute(
            select(privacy_ledger.c.federation_id, privacy_ledger.c.epsilon).join(
                latest,
                (latest.c.federation_id == privacy_ledger.c.federation_id)
                & (latest.c.round == privacy_ledger.c.round),
            )
        ).all()
    return {r.federation_id: r.epsilon for r in rows}
