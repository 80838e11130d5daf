"""The pure parts of secure aggregation: Shamir sharing, the PRG, fixed-point encoding, the
share encryption, the neighbour graph, and masks that cancel in the sum."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import yaml

from shared.secagg.graph import neighbours, threshold_for
from shared.secagg.keys import KeyPair, ShareDecryptError, agree, decrypt_share, encrypt_share
from shared.secagg.masking import FixedPoint, prg
from shared.secagg.protocol import add_masks, context
from shared.secagg.shamir import ShamirError, reconstruct, share_secret
from shared.spec import SpecError, parse_spec


def test_any_t_of_n_shares_rebuild_the_secret_and_fewer_do_not() -> None:
    secret = os.urandom(32)
    holders = [1, 2, 3, 4, 5]
    shares = share_secret(secret, holders, 3)
    for subset in itertools.combinations(holders, 3):
        got, bad = reconstruct({x: shares[x] for x in subset}, 3, 32)
        assert got == secret and bad == []
    with pytest.raises(ShamirError, match="3 are needed"):
        reconstruct({x: shares[x] for x in (1, 2)}, 3, 32)
    # two shares and a guess for the third rebuild a different secret: t-1 reveal nothing
    try:
        guess, _ = reconstruct({1: shares[1], 2: shares[2], 3: 12345}, 3, 32)
    except ShamirError as exc:  # most wrong guesses do not even fit in 32 bytes
        assert "does not fit" in str(exc)
    else:
        assert guess != secret


def test_redundant_shares_name_the_inconsistent_holder() -> None:
    secret = os.urandom(32)
    shares = share_secret(secret, [1, 2, 3, 4, 5, 6], 3)
    shares[4] = (shares[4] + 1) % (1 << 521)
    got, bad = reconstruct(shares, 3, 32)
    assert got == secret and bad == [4]
    # with one share more than t and one of them wrong, no majority: refused, not guessed
    few = {x: shares[x] for x in (1, 2, 4, 5)}
    few[1] = few[1] + 7
    with pytest.raises(ShamirError, match="agree on no secret"):
        reconstruct(few, 3, 32)


def test_prg_is_deterministic_and_seed_dependent() -> None:
    seed = bytes(range(32))
    a, b = prg(seed, 1000), prg(seed, 1000)
    assert a.dtype == np.uint64 and np.array_equal(a, b)
    assert np.array_equal(prg(seed, 10), a[:10])  # a prefix of the same stream
    other = prg(bytes(31) + b"\x01", 1000)
    assert not np.array_equal(a, other)
    # words look uniform: about half of the top bits are set
    assert 400 < int((a >> np.uint64(63)).sum()) < 600


# every modulus a spec allows, at the default scale, and the scales at the ends of its range
FIXED_POINTS = [(24, m) for m in range(32, 65)] + [(8, 32), (16, 40), (30, 64), (40, 64)]


@pytest.mark.parametrize(("scale_bits", "modulus_bits"), FIXED_POINTS)
def test_fixed_point_round_trip_within_half_a_step(scale_bits: int, modulus_bits: int) -> None:
    fp = FixedPoint(scale_bits, modulus_bits)
    x = np.random.default_rng(0).normal(0, 3, 10_000)
    words = fp.encode(x)
    wire = fp.to_wire(words)  # int32 at 2^32 (half the bytes), int64 above
    assert wire.dtype == (np.int32 if modulus_bits == 32 else np.int64)
    assert np.array_equal(fp.from_wire(wire), words)
    back = fp.decode(fp.from_wire(wire))
    assert np.abs(back - x).max() <= 0.5 / 2**scale_bits
    # sums of encodings decode to the sum, negatives included
    s = fp.add(fp.encode(x), fp.encode(-2 * x))
    assert np.abs(fp.decode(s) + x).max() <= 1.0 / 2**scale_bits
    with pytest.raises(ValueError, match="fixed-point range"):
        fp.encode(np.array([fp.limit * 2]))


@pytest.mark.parametrize(("scale_bits", "modulus_bits"), FIXED_POINTS)
def test_fixed_point_edges_of_the_range_survive_the_wire_exactly(
    scale_bits: int, modulus_bits: int
) -> None:
    fp = FixedPoint(scale_bits, modulus_bits)
    step = 2.0**-scale_bits
    top = np.floor(fp.limit * (1 - 2**-20) / step) * step  # the top bits of the word are set
    x = np.array([0.0, step, -step, top, -top])

    back = fp.decode(fp.from_wire(fp.to_wire(fp.encode(x))))

    assert np.array_equal(back, x)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("modulus_bits", [32, 63, 64])
def test_fixed_point_refuses_nan_and_infinity(modulus_bits: int, bad: float) -> None:
    fp = FixedPoint(24, modulus_bits)
    x = np.array([0.5, bad, -0.5])

    with pytest.raises(ValueError, match="NaN or infinity cannot be encoded"):
        fp.encode(x)


def test_share_encryption_detects_tampering_and_wrong_context() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    k_ab = agree(a.private, b.public, "share", "ctx")
    assert k_ab == agree(b.private, a.public, "share", "ctx")
    assert k_ab != agree(b.private, a.public, "share", "other round")
    blob = encrypt_share(k_ab, b"secret share", "a->b")
    assert decrypt_share(k_ab, blob, "a->b") == b"secret share"
    flipped = bytearray(blob)
    flipped[-1] ^= 1
    with pytest.raises(ShareDecryptError, match="authentication"):
        decrypt_share(k_ab, bytes(flipped), "a->b")
    with pytest.raises(ShareDecryptError):
        decrypt_share(k_ab, blob, "c->b")  # a share replayed as another sender's


@pytest.mark.parametrize(("n", "k"), [(5, None), (10, 4), (9, 6), (3, 8)])
def test_neighbour_graph_is_symmetric_regular_and_public(n: int, k: int | None) -> None:
    cohort = [f"client-{i:02d}" for i in range(n)]
    graph = neighbours(cohort, k, "fed/1/1")
    assert graph == neighbours(list(reversed(cohort)), k, "fed/1/1")
    degree = n - 1 if k is None or k >= n - 1 else k
    for c, peers in graph.items():
        assert len(peers) == degree and c not in peers
        assert all(c in graph[p] for p in peers)


def test_threshold_is_a_strict_majority_of_the_neighbours() -> None:
    assert threshold_for(4, 0.6) == 3
    assert threshold_for(4, 2) == 3  # a count below a majority is raised to one
    assert threshold_for(2, 0.6) == 2
    assert threshold_for(10, 1.0) == 10
    assert threshold_for(3, 99) == 3


@pytest.mark.parametrize("modulus_bits", [32, 48, 63, 64])
def test_masks_cancel_and_dropped_masks_can_be_removed(modulus_bits: int) -> None:
    """Five clients, k = 4 of them neighbours: the sum of the masked inputs, less each
    survivor's PRG(b) and the dropped client's pairwise masks, is the sum of the inputs."""
    fp = FixedPoint(24, modulus_bits)
    rng = np.random.default_rng(1)
    ids = [f"c{i}" for i in range(5)]
    graph = neighbours(ids, 4, "s")
    keys = {c: KeyPair.generate() for c in ids}
    b = {c: os.urandom(32) for c in ids}
    x = {c: rng.normal(0, 1, 257) for c in ids}
    ctx = context("fed", 3, 1)

    def masked(c: str) -> np.ndarray:
        peers = {p: keys[p].public for p in graph[c]}
        return add_masks(fp.encode(x[c]), fp, c, b[c], keys[c].private, peers, ctx)

    ys = {c: masked(c) for c in ids}
    assert abs(np.corrcoef(fp.decode(ys["c0"]), x["c0"])[0, 1]) < 0.2
    survivors, dropped = ids[:4], "c4"
    total = np.zeros(257, dtype=np.uint64)
    for c in survivors:
        total = fp.add(total, ys[c])
        total = fp.add(total, prg(b[c], 257), -1)
    # what the service does with the dropped client's rebuilt s_sk: recompute each survivor's
    # mask with it and take it back out
    dropped_only = {dropped: keys[dropped].public}
    for c in graph[dropped]:
        m = add_masks(
            np.zeros(257, dtype=np.uint64), fp, c, bytes(32), keys[c].private, dropped_only, ctx
        )
        total = fp.add(total, fp.add(m, prg(bytes(32), 257), -1), -1)
    want = sum(x[c] for c in survivors)
    assert np.abs(fp.decode(total) - want).max() <= 4 * 0.5 / 2**24


def test_spec_refuses_what_secure_aggregation_cannot_do() -> None:
    with open("examples/tiny-clip-bias.yaml") as f:
        base = yaml.safe_load(f)
    ok = parse_spec({**base, "secure_aggregation": {"neighbours": 4, "threshold": 3}})
    assert ok.secure_aggregation is not None and ok.secure_aggregation.neighbours == 4
    assert parse_spec(base).secure_aggregation is None
    fedadam = {**base, "aggregation": {"strategy": "fedadam"}, "secure_aggregation": {}}
    assert parse_spec(fedadam).aggregation.strategy == "fedadam"
    # a dumped secure spec parses again (the service stores specs so)
    assert parse_spec(ok.model_dump(mode="json")) == ok
    cases: list[tuple[dict[str, object], str]] = [
        ({"aggregation": {"strategy": "median"}}, "aggregation.strategy: median must see"),
        ({"aggregation": {"strategy": "trimmed_mean"}}, "trimmed_mean must see single"),
        ({"rounds": {"quorum": 1, "min_updates": 1}}, "min_updates must be at least 2"),
        (
            {
                "privacy": {
                    "mechanism": "central_gaussian",
                    "clip_norm": 1.0,
                    "noise_multiplier": 1.0,
                    "delta": 1e-5,
                    "max_epsilon": 10,
                }
            },
            "secure_aggregation hides",
        ),
    ]
    for extra, message in cases:
        with pytest.raises(SpecError, match=message):
            parse_spec({**base, **extra, "secure_aggregation": {}})
    for bad, message in [
        ({"threshold": 0.5}, r"secure_aggregation.threshold: a fractional threshold"),
        ({"neighbours": 3}, "secure_aggregation.neighbours: neighbours must be even"),
        ({"modulus_bits": 80}, "secure_aggregation.modulus_bits"),
    ]:
        with pytest.raises(SpecError, match=message):
            parse_spec({**base, "secure_aggregation": bad})
