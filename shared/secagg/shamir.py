"""Shamir secret sharing (Shamir 1979) over the prime field of the Mersenne prime 2^521 - 1.

A secret of up to 64 bytes is the constant term of a random polynomial of degree t - 1; the
share of holder x (1-based) is the polynomial at x. Any t shares rebuild it (Lagrange at 0);
fewer say nothing about it. With more than t shares, `reconstruct` checks them against each
other and names the holders whose shares lie off the polynomial most of them agree on: it
tries the first t shares, then leaves out one share before the last one used, then two, ...,
so a few wrong shares are left out wherever they sort.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterator, Mapping

__all__ = [
    "PRIME",
    "SHARE_BYTES",
    "ShamirError",
    "reconstruct",
    "share_from_bytes",
    "share_secret",
    "share_to_bytes",
]

PRIME = (1 << 521) - 1
SHARE_BYTES = 66  # a field element, big-endian
_MAX_SECRET_BYTES = 64
# Subsets of t shares tried when the shares disagree: at t = 9 of 15 shares (a cohort of 16
# at threshold 0.6), every subset that leaves out up to 4 wrong shares.
_MAX_SUBSETS = 2000


class ShamirError(ValueError):
    """Shares that cannot rebuild a secret: too few, or no consistent majority."""


def share_secret(
    secret: bytes,
    holders: list[int],
    threshold: int,
    randbelow: Callable[[int], int] = secrets.randbelow,
) -> dict[int, int]:
    """The share of each holder (distinct x in 1..PRIME-1) of `secret`, any `threshold` of which
    rebuild it."""
    if not 1 <= threshold <= len(holders):
        raise ShamirError(f"threshold {threshold} must be between 1 and {len(holders)} holders")
    if len(secret) > _MAX_SECRET_BYTES:
        raise ShamirError(f"a secret is at most {_MAX_SECRET_BYTES} bytes")
    if len(set(holders)) != len(holders) or any(not 0 < x < PRIME for x in holders):
        raise ShamirError("holders must be distinct non-zero field elements")
    coeffs = [int.from_bytes(secret, "big")] + [randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _evaluate(coeffs, x) for x in holders}


def _evaluate(coeffs: list[int], x: int) -> int:
    y = 0
    for c in reversed(coeffs):
        y = (y * x + c) % PRIME
    return y


def _interpolate(points: list[tuple[int, int]], at: int) -> int:
    """The value at `at` of the polynomial of degree len(points) - 1 through `points`."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (at - xj) % PRIME
                den = den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


def reconstruct(shares: Mapping[int, int], threshold: int, size: int) -> tuple[bytes, list[int]]:
    """The `size`-byte secret from `shares` (x -> y), and the holders whose shares are
    inconsistent with it.

    With exactly `threshold` shares nothing can be checked. With more, the secret is the one a
    strict majority of more than `threshold` shares agree on; `ShamirError` when none does.
    """
    points = sorted(shares.items())
    if len(points) < threshold:
        raise ShamirError(f"{len(points)} shares, {threshold} are needed")
    if len(points) == threshold:
        return _to_bytes(_interpolate(points, 0), size), []
    # Within this many wrong shares no other polynomial can fit as many (unique decoding).
    surely = (len(points) - threshold) // 2
    best: tuple[int, list[int]] | None = None
    for subset in itertools.islice(_subsets(len(points), threshold), _MAX_SUBSETS):
        basis = [points[i] for i in subset]
        used = set(subset)
        off = [
            x for i, (x, y) in enumerate(points) if i not in used and _interpolate(basis, x) != y
        ]
        if best is None or len(off) < len(best[1]):
            best = (_interpolate(basis, 0), off)
        if len(off) <= surely:
            break
    assert best is not None
    secret, off = best
    agree = len(points) - len(off)
    if agree <= threshold or agree * 2 <= len(points):
        raise ShamirError(
            f"the {len(points)} shares agree on no secret (at most {agree} lie on one polynomial "
            f"of degree {threshold - 1}); inconsistent holders cannot be told apart"
        )
    return _to_bytes(secret, size), off


def _subsets(n: int, t: int) -> Iterator[tuple[int, ...]]:
    """Every t-subset of range(n), each once: the first t indices, then those that skip one
    index before their last, then two, ... (a subset skipping k avoids k wrong shares)."""
    for skipped in range(n - t + 1):
        last = t + skipped - 1
        for left_out in itertools.combinations(range(last), skipped):
            gone = set(left_out)
            yield tuple(i for i in range(last + 1) if i not in gone)


def _to_bytes(value: int, size: int) -> bytes:
    if value >= 1 << (8 * size):
        raise ShamirError(f"the rebuilt secret does not fit in {size} bytes: a share is wrong")
    return value.to_bytes(size, "big")


def share_to_bytes(y: int) -> bytes:
    return y.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(raw: bytes) -> int:
    if len(raw) != SHARE_BYTES:
        raise ShamirError(f"a share is {SHARE_BYTES} bytes, got {len(raw)}")
    y = int.from_bytes(raw, "big")
    if y >= PRIME:
        raise ShamirError("a share is not a field element")
    return y
