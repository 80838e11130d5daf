"""Key agreement and share encryption between two clients (SecAgg, Bonawitz et al. 2017, §4).

Each client advertises two X25519 public keys: `c_pk` to agree the AES-GCM key its shares are
encrypted under, `s_pk` to agree the seed of its pairwise masks. Agreed secrets go through
HKDF-SHA256 with a label and the round's context, so no key serves two purposes or two rounds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

__all__ = [
    "KEY_BYTES",
    "KeyAgreementError",
    "KeyPair",
    "ShareDecryptError",
    "agree",
    "decrypt_share",
    "encrypt_share",
    "mask_seed",
    "public_from_hex",
]

KEY_BYTES = 32
_NONCE_BYTES = 12
_VERSION = b"fedtune-secagg/1"


class ShareDecryptError(ValueError):
    """A share that fails AES-GCM authentication: altered on its way, or from someone else."""


class KeyAgreementError(ValueError):
    """A public key no secret can be agreed with: a low-order point, whose X25519 output is
    all zeros whatever the private key (RFC 7748, §6.1)."""


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair, kept as raw bytes (what a client writes to its work dir)."""

    private: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        key = X25519PrivateKey.generate()
        return cls(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))

    @property
    def public(self) -> bytes:
        key = X25519PrivateKey.from_private_bytes(self.private)
        return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_from_hex(text: str) -> bytes:
    """A public key from its hex form; `ValueError` when it is not one, `KeyAgreementError`
    when no secret can be agreed with it (found by a trial agreement with a throwaway key)."""
    raw = bytes.fromhex(text)
    _exchange(X25519PrivateKey.generate(), X25519PublicKey.from_public_bytes(raw))
    return raw


def _exchange(private: X25519PrivateKey, public: X25519PublicKey) -> bytes:
    try:
        return private.exchange(public)
    except ValueError:  # `cryptography` refuses an all-zero shared secret
        raise KeyAgreementError(
            "the public key is a low-order X25519 point: no secret can be agreed with it"
        ) from None


def agree(private: bytes, public: bytes, label: str, context: str) -> bytes:
    """A 32-byte key both ends derive: X25519(private, public), then HKDF-SHA256 bound to
    `label` (what the key is for) and `context` (federation, round, attempt, the pair);
    `KeyAgreementError` when `public` is a low-order point."""
    shared = _exchange(
        X25519PrivateKey.from_private_bytes(private), X25519PublicKey.from_public_bytes(public)
    )
    info = _VERSION + b"\0" + label.encode() + b"\0" + context.encode()
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def mask_seed(s_private: bytes, s_public_other: bytes, context: str) -> bytes:
    """The seed of the pairwise mask between two clients (the same from either side)."""
    return agree(s_private, s_public_other, "pairwise-mask", context)


def encrypt_share(key: bytes, plaintext: bytes, aad: str) -> bytes:
    """nonce || AES-256-GCM(plaintext), authenticated with `aad` (sender, recipient, round)."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad.encode())


def decrypt_share(key: bytes, blob: bytes, aad: str) -> bytes:
    if len(blob) < _NONCE_BYTES + 16:
        raise ShareDecryptError("ciphertext too short")
    try:
        return AESGCM(key).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], aad.encode())
    except InvalidTag:
        raise ShareDecryptError("AES-GCM authentication failed") from None
