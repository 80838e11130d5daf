"""Secure aggregation, SecAgg+ (Bell et al., CCS 2020) after SecAgg (Bonawitz et al., CCS 2017):
the protocol's pure parts, shared by the service and the clients.

- `shamir`: t-of-n secret sharing over a prime field, with redundant-share checking;
- `keys`: X25519 key agreement, HKDF, AES-GCM encryption of the shares between two clients;
- `masking`: the seeded PRG, fixed-point encoding into integers mod 2^bits, the masks;
- `graph`: the SecAgg+ neighbour graph and each client's threshold.

The protocol's messages are the `Secagg*` models of `shared.api`.
"""
