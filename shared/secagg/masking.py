"""Masks and the fixed-point encoding (SecAgg, Bonawitz et al. 2017, §3-4).

A client's masked input is, modulo 2^bits,

    y_i = encode(w_i * delta_i) + PRG(b_i) + sum_{j in N(i)} sign(i, j) * PRG(s_ij)

with sign +1 when i sorts before j and -1 after, so the pairwise masks cancel in the sum over
the cohort; the service removes PRG(b_i) of the survivors and the masks of the dropped
(rebuilt from their shares), and decodes the sum. The PRG is AES-256 in counter mode keyed
by the seed (from `cryptography`): the same seed gives the same mask on every machine.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["FixedPoint", "prg", "sign"]

_ZERO_NONCE = bytes(16)
_PRG_CHUNK = 1 << 20  # words expanded at a time


def prg(seed: bytes, n: int) -> np.ndarray:
    """`n` pseudo-random uint64 words from a 32-byte seed (AES-256-CTR keystream)."""
    if len(seed) != 32:
        raise ValueError("a PRG seed is 32 bytes")
    enc = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_NONCE)).encryptor()
    out = np.empty(n, dtype=np.uint64)
    for start in range(0, n, _PRG_CHUNK):
        stop = min(n, start + _PRG_CHUNK)
        out[start:stop] = np.frombuffer(enc.update(bytes(8 * (stop - start))), dtype="<u8")
    return out


def sign(me: str, other: str) -> int:
    """+1 when `me` adds the pairwise mask it shares with `other`, -1 when it subtracts it."""
    return 1 if me < other else -1


class FixedPoint:
    """Reals as integers modulo 2^bits: round(x * 2^scale_bits), two's complement.

    Arithmetic runs on uint64 words. On the wire a word is an int32 when the modulus is 2^32
    (the word's bits; a masked input then weighs what a float32 delta does) and an int64
    holding 0..2^bits-1 otherwise."""

    def __init__(self, scale_bits: int, modulus_bits: int) -> None:
        self.scale = float(1 << scale_bits)
        self.bits = modulus_bits
        self.mask = np.uint64((1 << modulus_bits) - 1)
        self.wire = np.dtype(np.int32 if modulus_bits <= 32 else np.int64)

    def to_wire(self, words: np.ndarray) -> np.ndarray:
        """uint64 words mod 2^bits -> the wire's integers (see the class)."""
        if self.wire == np.int32:
            return words.astype(np.uint32).view(np.int32)
        return words.view(np.int64)

    def from_wire(self, values: np.ndarray) -> np.ndarray:
        """The wire's integers -> uint64 words (the inverse of `to_wire`)."""
        if self.wire == np.int32:
            return values.view(np.uint32).astype(np.uint64)
        return values.view(np.uint64)

    @property
    def limit(self) -> float:
        """The largest magnitude a decoded sum may have."""
        return float((1 << (self.bits - 1)) - 1) / self.scale

    def encode(self, x: np.ndarray) -> np.ndarray:
        """float array -> uint64 words mod 2^bits; `ValueError` for NaN, infinity or past the range."""
        values = np.asarray(x, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("NaN or infinity cannot be encoded: the update has diverged")
        scaled = np.rint(values * self.scale)
        if scaled.size and float(np.abs(scaled).max()) > (1 << (self.bits - 1)) - 1:
            raise ValueError(f"value beyond the fixed-point range ±{self.limit:.6g}")
        return scaled.astype(np.int64).view(np.uint64) & self.mask

    def decode(self, words: np.ndarray) -> np.ndarray:
        """uint64 words mod 2^bits -> float64 (the inverse of `encode`)."""
        words = np.asarray(words, dtype=np.uint64) & self.mask
        negative = words >= np.uint64(1 << (self.bits - 1))
        # two's complement in uint64: set the bits above the modulus, then read as int64
        signed = np.where(negative, words | ~self.mask, words).view(np.int64)
        return signed.astype(np.float64) / self.scale

    def add(self, a: np.ndarray, b: np.ndarray, times: int = 1) -> np.ndarray:
        """a + times * b mod 2^bits (times is +1 or -1)."""
        with np.errstate(over="ignore"):
            out = a + b if times == 1 else a - b
        return out & self.mask
