"""The service rebuilds a secure round's secrets from the unmasking shares though a few holders
send wrong ones, wherever those holders sort (unmask.rebuild_secrets over shamir.reconstruct)."""

from __future__ import annotations

import os

import pytest

from aggregator_service.services.secagg.round import Round
from aggregator_service.services.secagg.unmask import rebuild_secrets
from shared.secagg.protocol import SECRET_BYTES, holder_index
from shared.secagg.shamir import PRIME, reconstruct, share_secret, share_to_bytes
from shared.spec import SecureAggregationSpec


def _round(cohort: list[str]) -> Round:
    return Round(
        fid="fed_recovery",
        number=1,
        attempt=1,
        phase="unmask",
        deadline_at=0.0,
        cohort=cohort,
        u1=cohort,
        u2=cohort,
        events=[],
        secrets={},
        seed=0,
        sa=SecureAggregationSpec(threshold=0.6),
    )


def test_a_lying_holder_with_the_smallest_x_is_named_and_every_secret_rebuilt() -> None:
    """A cohort of 16 (15 shares per secret, 9 rebuild it): the first client in the cohort,
    x = 1 in every sharing, sends a wrong share of each neighbour's self-mask seed."""
    cohort = [f"cli_{i:02d}" for i in range(16)]
    rnd = _round(cohort)
    liar = cohort[0]
    seeds = {owner: os.urandom(SECRET_BYTES) for owner in cohort}
    unmask: dict[str, list[dict[str, str]]] = {holder: [] for holder in cohort}
    for owner, seed in seeds.items():
        holders = rnd.graph[owner]
        shares = share_secret(
            seed, [holder_index(cohort, h) for h in holders], rnd.threshold(owner)
        )
        for holder in holders:
            y = shares[holder_index(cohort, holder)]
            if holder == liar:
                y = (y + 1) % PRIME
            unmask[holder].append({"owner": owner, "kind": "b", "share": share_to_bytes(y).hex()})

    secrets, events = rebuild_secrets(rnd, unmask)

    assert secrets["b"] == {owner: seed.hex() for owner, seed in seeds.items()}
    assert len(events) == len(cohort) - 1
    assert all(f"{liar}'s share of" in e for e in events)


@pytest.mark.parametrize(
    "wrong",
    [{1}, {1, 2}, {1, 15}, {1, 2, 3}, {2, 5, 9}, {1, 2, 3, 4}],
    ids=lambda w: "x=" + ",".join(map(str, sorted(w))),
)
def test_wrong_shares_are_left_out_wherever_they_sort(wrong: set[int]) -> None:
    secret = os.urandom(SECRET_BYTES)
    shares = share_secret(secret, list(range(1, 16)), 9)
    sent = {x: (y + 7) % PRIME if x in wrong else y for x, y in shares.items()}

    rebuilt, off = reconstruct(sent, 9, SECRET_BYTES)

    assert (rebuilt, off) == (secret, sorted(wrong))
