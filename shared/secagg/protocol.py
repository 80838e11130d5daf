"""What both sides compute the same way: the round's context, the associated data of a share,
a share's plaintext, and the masks a client adds (SecAgg, Bonawitz et al. 2017, Fig. 4)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from shared.secagg.keys import mask_seed
from shared.secagg.masking import FixedPoint, prg, sign
from shared.secagg.shamir import SHARE_BYTES, share_from_bytes, share_to_bytes

__all__ = [
    "MASKED_FORMAT",
    "SECRET_BYTES",
    "add_masks",
    "context",
    "holder_index",
    "pack_shares",
    "pair_context",
    "share_aad",
    "unpack_shares",
]

MASKED_FORMAT = "fedtune-masked/1"  # `__metadata__['format']` of a masked input
SECRET_BYTES = 32  # b (the self-mask seed) and s_sk (the mask key) are both 32 bytes


def context(fid: str, number: int, attempt: int) -> str:
    """Binds every derived key and every share to one attempt of one round of a federation."""
    return f"{fid}/{number}/{attempt}"


def share_aad(ctx: str, sender: str, recipient: str) -> str:
    return f"{ctx}/share/{sender}->{recipient}"


def holder_index(cohort: list[str], client_id: str) -> int:
    """A client's x coordinate in every Shamir sharing of the round: its place in the sorted
    cohort, from 1."""
    return sorted(cohort).index(client_id) + 1


def pack_shares(b_share: int, s_share: int) -> bytes:
    """A share's plaintext: the recipient's share of b, then of s_sk."""
    return share_to_bytes(b_share) + share_to_bytes(s_share)


def unpack_shares(plain: bytes) -> tuple[int, int]:
    if len(plain) != 2 * SHARE_BYTES:
        raise ValueError(f"a share's plaintext is {2 * SHARE_BYTES} bytes, got {len(plain)}")
    return share_from_bytes(plain[:SHARE_BYTES]), share_from_bytes(plain[SHARE_BYTES:])


def add_masks(
    words: np.ndarray,
    fp: FixedPoint,
    me: str,
    b: bytes,
    s_private: bytes,
    peers: Mapping[str, bytes],
    ctx: str,
) -> np.ndarray:
    """`words` (the encoded, weighted delta) + PRG(b) + sum over `peers` (neighbour id ->
    its s_pk) of sign(me, j) * PRG(s_me,j), mod 2^bits."""
    out = fp.add(words, prg(b, words.size))
    for peer in sorted(peers):
        seed = mask_seed(s_private, peers[peer], pair_context(ctx, me, peer))
        out = fp.add(out, prg(seed, words.size), sign(me, peer))
    return out


def pair_context(ctx: str, a: str, b: str) -> str:
    """The context of the mask two clients share (the same from either side)."""
    lo, hi = sorted((a, b))
    return f"{ctx}/pair/{lo}/{hi}"
