"""The SecAgg+ neighbour graph (Bell et al. 2020, §3): each client masks with, and shares its
secrets among, k neighbours instead of the whole cohort.

The graph is a Harary graph H(k, n) over a pseudo-random order of the cohort drawn from a
public seed: every client is joined to the k/2 clients before and after it on the ring. With
k >= n - 1 (or k unset) it is the complete graph of the original SecAgg.
"""

from __future__ import annotations

import hashlib
import math
import random

__all__ = ["neighbours", "threshold_for"]


def neighbours(cohort: list[str], k: int | None, seed: str) -> dict[str, list[str]]:
    """Each client's neighbours (sorted), for the cohort's client ids and a public seed."""
    ids = sorted(set(cohort))
    n = len(ids)
    if k is None or k >= n - 1:
        return {c: [o for o in ids if o != c] for c in ids}
    order = list(ids)
    rng = random.Random(int.from_bytes(hashlib.sha256(seed.encode()).digest(), "big"))
    rng.shuffle(order)
    half = k // 2
    out: dict[str, set[str]] = {c: set() for c in ids}
    for pos, c in enumerate(order):
        for step in range(1, half + 1):
            other = order[(pos + step) % n]
            out[c].add(other)
            out[other].add(c)
    return {c: sorted(v) for c, v in out.items()}


def threshold_for(degree: int, threshold: float | int) -> int:
    """Shares needed among `degree` holders: the spec's fraction or count, at least a strict
    majority of them (so no one can be both rebuilt as dropped and as a survivor), at most
    all of them."""
    want = math.ceil(threshold * degree) if isinstance(threshold, float) else int(threshold)
    return max(1, min(degree, max(want, degree // 2 + 1)))
