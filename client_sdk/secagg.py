"""Secure aggregation on the client: one round of SecAgg+ (Bell et al. 2020; Bonawitz et al.
2017), run by `fedtune-client train` in place of the plain upload.

    advertise keys -> share keys -> masked input -> unmask

Every secret (the two X25519 private keys, the self-mask seed b, the shares received) is
written to the work dir (mode 0600) before anything derived from it leaves the machine, and
every body is computed once and kept: a retry or a restarted client sends the same bytes,
which the service answers as a repeat. The delta is clipped to `aggregation.clip_norm` and
multiplied by its weight here, before masking: the service cannot do either on a masked input.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from client_sdk._client import FedTuneClient, _parse, _parse_list
from client_sdk._exceptions import (
    ConflictError,
    FedTuneError,
    PermissionDeniedError,
    UnprocessableEntityError,
)
from shared.api import (
    API_PREFIX,
    RoundStatus,
    SecaggComplaint,
    SecaggIncomingShare,
    SecaggKeys,
    SecaggReceipt,
    SecaggShare,
    SecaggShares,
    SecaggState,
    SecaggUnmask,
    SecaggUnmaskShare,
)
from shared.blobs import Blob, atomic_write_bytes, encode_state
from shared.secagg.keys import (
    KeyAgreementError,
    KeyPair,
    ShareDecryptError,
    agree,
    decrypt_share,
    encrypt_share,
    public_from_hex,
)
from shared.secagg.masking import FixedPoint
from shared.secagg.protocol import (
    MASKED_FORMAT,
    add_masks,
    context,
    holder_index,
    pack_shares,
    pair_context,
    share_aad,
    unpack_shares,
)
from shared.secagg.shamir import share_secret, share_to_bytes
from shared.spec import FederationSpec

__all__ = ["SecureAggregationError", "SecureRound", "masked_words", "plain_vector"]

log = logging.getLogger("client_sdk")

_POLL_S = 5  # long-poll of the round between phase checks
# Refusals that say the round moved on while this client acted: it looks again.
_MOVED_ON = frozenset(
    {
        "secagg_wrong_phase",
        "secagg_attempt_over",
        "round_closed",
        "federation_paused",
        "federation_cancelled",
    }
)


class SecureAggregationError(FedTuneError):
    """This client's delta cannot be sent masked (beyond the fixed-point range, ...)."""


def plain_vector(delta: dict[str, torch.Tensor]) -> tuple[list[str], np.ndarray]:
    """The delta's tensors in name order, flattened into one float64 vector."""
    names = sorted(delta)
    flat = [delta[n].detach().to(torch.float64).reshape(-1).numpy() for n in names]
    return names, np.concatenate(flat) if flat else np.zeros(0)


def masked_words(
    spec: FederationSpec, vector: np.ndarray, num_examples: int, cohort_size: int
) -> np.ndarray:
    """encode(weight x clipped delta): the words a client masks (before the masks)."""
    sa = spec.secure_aggregation
    assert sa is not None
    agg = spec.aggregation
    x = np.asarray(vector, dtype=np.float64)
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise SecureAggregationError(
            f"training diverged: the local delta holds {bad} NaN or infinite values; "
            "it was not masked or sent"
        )
    if agg.max_abs_value is not None and x.size and float(np.abs(x).max()) > agg.max_abs_value:
        raise SecureAggregationError(
            f"the local delta holds a value of magnitude {float(np.abs(x).max()):.3g}, beyond "
            f"aggregation.max_abs_value ({agg.max_abs_value:g}); not sent"
        )
    norm = float(np.linalg.norm(x))
    if agg.clip_norm is not None and norm > agg.clip_norm:
        x = x * (agg.clip_norm / norm)
    weight = num_examples if agg.weighting == "num_examples" else 1
    fp = FixedPoint(sa.scale_bits, sa.modulus_bits)
    peak = float(np.abs(x).max()) * weight * cohort_size if x.size else 0.0
    if peak > fp.limit:
        raise SecureAggregationError(
            f"weighted delta too large for the fixed-point range (|w x delta| x cohort = "
            f"{peak:.3g} > {fp.limit:.3g}); lower secure_aggregation.scale_bits or clip_norm"
        )
    return fp.encode(x * weight)


def _share_key(sec: dict[str, str], c_pk: str, ctx: str, sender: str, recipient: str) -> bytes:
    """The AES-GCM key of the shares `sender` sends `recipient` (the same from either end)."""
    return agree(
        bytes.fromhex(sec["c_sk"]),
        public_from_hex(c_pk),
        "share-key",
        pair_context(ctx, sender, recipient),
    )


def _check_neighbour_keys(st: SecaggState) -> None:
    """`KeyAgreementError`, naming the neighbour, when a neighbour's key cannot be used."""
    for peer in st.neighbours:
        for name, key in (("c_pk", peer.c_pk), ("s_pk", peer.s_pk)):
            try:
                public_from_hex(key)
            except KeyAgreementError as exc:
                raise KeyAgreementError(f"neighbour {peer.client_id}'s {name}: {exc}") from None


class SecureRound:
    """One client's part in the secure rounds of one federation."""

    def __init__(
        self,
        client: FedTuneClient,
        spec: FederationSpec,
        federation_id: str,
        client_id: str,
        work_dir: Path,
    ) -> None:
        assert spec.secure_aggregation is not None
        self.client, self.spec, self.fid, self.me = client, spec, federation_id, client_id
        self.dir = work_dir / "secagg"
        self.fp = FixedPoint(
            spec.secure_aggregation.scale_bits, spec.secure_aggregation.modulus_bits
        )

    # -- HTTP ------------------------------------------------------------------------------

    def _url(self, number: int, tail: str = "") -> str:
        return f"{API_PREFIX}/federations/{self.fid}/rounds/{number}/secure-aggregation{tail}"

    def state(self, number: int) -> SecaggState:
        data = self.client._request_json("GET", self._url(number))
        return _parse(SecaggState, data, "secure aggregation state")

    def _post(self, number: int, tail: str, body: BaseModel) -> SecaggReceipt:
        return self.client._post(
            self._url(number, tail), body, SecaggReceipt, f"secure aggregation {tail[1:]}"
        )

    # -- work dir --------------------------------------------------------------------------

    def _path(self, number: int, attempt: int, name: str) -> Path:
        return self.dir / f"round-{number}" / f"attempt-{attempt}" / name

    def _load(self, number: int, attempt: int, name: str) -> Any:
        path = self._path(number, attempt, name)
        return json.loads(path.read_text()) if path.exists() else None

    def _save(self, number: int, attempt: int, name: str, value: Any) -> None:
        path = self._path(number, attempt, name)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write_bytes(path, json.dumps(value).encode())
        os.chmod(path, 0o600)

    def secrets(self, number: int, attempt: int) -> dict[str, str]:
        """This attempt's private keys and b, created once and kept."""
        held = self._load(number, attempt, "secrets.json")
        if held is None:
            held = {
                "c_sk": KeyPair.generate().private.hex(),
                "s_sk": KeyPair.generate().private.hex(),
                "b": os.urandom(32).hex(),
            }
            self._save(number, attempt, "secrets.json", held)
        return dict(held)

    # -- the steps -------------------------------------------------------------------------

    def advertise(self, number: int, attempt: int) -> SecaggReceipt:
        sec = self.secrets(number, attempt)
        body = SecaggKeys(
            attempt=attempt,
            c_pk=KeyPair(bytes.fromhex(sec["c_sk"])).public.hex(),
            s_pk=KeyPair(bytes.fromhex(sec["s_sk"])).public.hex(),
        )
        return self._post(number, "/keys", body)

    def share_body(self, number: int, st: SecaggState) -> SecaggShares:
        """The encrypted shares for the neighbours (computed once, kept)."""
        held = self._load(number, st.attempt, "shares.json")
        if held is not None:
            return SecaggShares.model_validate(held)
        _check_neighbour_keys(st)
        sec = self.secrets(number, st.attempt)
        assert st.threshold is not None
        ctx = context(self.fid, number, st.attempt)
        xs = {p.client_id: holder_index(st.cohort, p.client_id) for p in st.neighbours}
        b_sh = share_secret(bytes.fromhex(sec["b"]), list(xs.values()), st.threshold)
        s_sh = share_secret(bytes.fromhex(sec["s_sk"]), list(xs.values()), st.threshold)
        shares = []
        for peer in st.neighbours:
            j = peer.client_id
            key = _share_key(sec, peer.c_pk, ctx, self.me, j)
            plain = pack_shares(b_sh[xs[j]], s_sh[xs[j]])
            ct = encrypt_share(key, plain, share_aad(ctx, self.me, j))
            shares.append(SecaggShare(recipient=j, ciphertext=ct.hex()))
        body = SecaggShares(attempt=st.attempt, shares=shares)
        self._save(number, st.attempt, "shares.json", body.model_dump(mode="json"))
        return body

    def received(self, number: int, st: SecaggState) -> dict[str, list[str]]:
        """The shares the neighbours sent, decrypted (sender -> [b share, s share] in hex);
        a share that fails authentication is reported, naming its sender."""
        held = self._load(number, st.attempt, "received.json")
        if held is not None:
            return dict(held)
        data = self.client._request_json(
            "GET", self._url(number, "/shares"), params={"attempt": st.attempt}
        )
        incoming = _parse_list(SecaggIncomingShare, data, "secure aggregation shares")
        sec = self.secrets(number, st.attempt)
        ctx = context(self.fid, number, st.attempt)
        keys = {p.client_id: p for p in st.neighbours}
        out: dict[str, list[str]] = {}
        for item in incoming:
            peer = keys.get(item.sender)
            if peer is None:
                continue
            key = _share_key(sec, peer.c_pk, ctx, item.sender, self.me)
            try:
                plain = decrypt_share(
                    key, bytes.fromhex(item.ciphertext), share_aad(ctx, item.sender, self.me)
                )
                b_share, s_share = unpack_shares(plain)
            except (ShareDecryptError, ValueError) as exc:
                log.warning(
                    "round %d: the share from %s failed authentication (%s); reporting it",
                    number,
                    item.sender,
                    exc,
                )
                complaint = SecaggComplaint(
                    attempt=st.attempt, accused=item.sender, reason=str(exc)
                )
                self._post(number, "/complaints", complaint)
                continue
            out[item.sender] = [share_to_bytes(b_share).hex(), share_to_bytes(s_share).hex()]
        self._save(number, st.attempt, "received.json", out)
        return out

    def masked_input(
        self, number: int, st: SecaggState, delta_path: Path, num_examples: int
    ) -> Path:
        """The masked input file (written once, kept): the fixed point's wire words (int32 or
        int64) in the manifest's shapes."""
        path = self._path(number, st.attempt, "masked.safetensors")
        if path.exists():
            return path
        blob = Blob.open(delta_path)
        try:
            delta = blob.load()
            metrics = blob.metadata.get("metrics", "{}")
        finally:
            blob.close()
        names, vector = plain_vector(delta)
        words = masked_words(self.spec, vector, num_examples, len(st.cohort))
        sec = self.secrets(number, st.attempt)
        shared = set(st.shared)
        peers = {
            p.client_id: public_from_hex(p.s_pk) for p in st.neighbours if p.client_id in shared
        }
        masked = add_masks(
            words,
            self.fp,
            self.me,
            bytes.fromhex(sec["b"]),
            bytes.fromhex(sec["s_sk"]),
            peers,
            context(self.fid, number, st.attempt),
        )
        tensors: dict[str, torch.Tensor] = {}
        offset = 0
        for name in names:
            shape = delta[name].shape
            size = math.prod(shape)
            chunk = self.fp.to_wire(masked[offset : offset + size]).reshape(shape)
            tensors[name] = torch.from_numpy(chunk.copy())
            offset += size
        meta = {
            "format": MASKED_FORMAT,
            "federation": self.fid,
            "round": str(number),
            "attempt": str(st.attempt),
            "num_examples": str(num_examples),
            "metrics": metrics,
        }
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write_bytes(path, encode_state(tensors, meta))
        return path

    def upload_masked(self, number: int, attempt: int, path: Path) -> SecaggReceipt:
        url = self._url(number, "/masked-input") + f"?attempt={attempt}"
        data = self.client._upload(url, path, label=f"masked input round {number}")
        return _parse(SecaggReceipt, data, "secure aggregation masked input")

    def unmask_body(self, number: int, st: SecaggState) -> SecaggUnmask:
        got = self.received(number, st)
        survivors = set(st.survivors)
        shares = []
        for owner in sorted(got):
            if owner not in st.shared:
                continue
            kind = "b" if owner in survivors else "s"
            shares.append(
                SecaggUnmaskShare(owner=owner, kind=kind, share=got[owner][0 if kind == "b" else 1])
            )
        return SecaggUnmask(attempt=st.attempt, shares=shares)

    # -- the round -------------------------------------------------------------------------

    def run(self, number: int, delta_path: Path, num_examples: int) -> bool | None:
        """Take part in secure round `number` until it closes: True when its aggregate holds
        this client's masked input, False when it closed without it, None while the federation
        is not running (the caller waits, then calls again).

        A client left out of one attempt (too late for its cohort, U1 or U2, named by a
        neighbour whose share failed authentication, or handed an unusable neighbour key) sits
        that attempt out and joins the next one if the protocol restarts: every secret is per
        attempt, and a restarted process finds itself left out of the same attempt again."""
        sat_out = 0  # the attempt this client takes no further part in
        while True:
            status = self.client.current_round(self.fid, wait_s=0)
            if status.federation_status != "running":
                return None
            if status.round != number or status.status != "open":
                return self._counted(number, status)
            st = self.state(number)
            why: str | None = None
            warn = False
            try:
                if st.attempt != sat_out:
                    why = self.step(number, st, delta_path, num_examples)
            except ConflictError as exc:
                if exc.code not in _MOVED_ON:
                    raise  # otherwise the round (or the federation) moved on meanwhile: look again
            except PermissionDeniedError as exc:
                if exc.code != "not_in_cohort":
                    raise
                why = "the attempt went on without this client"
            except UnprocessableEntityError as exc:
                if exc.code != "secagg_accused":
                    raise
                why, warn = exc.detail or exc.code, True
            except KeyAgreementError as exc:
                why, warn = str(exc), True
            if why is not None:
                sat_out = st.attempt
                log.log(
                    logging.WARNING if warn else logging.INFO,
                    "round %d: %s; sitting out attempt %d of the secure round (this client "
                    "joins the next attempt if the protocol restarts)",
                    number,
                    why,
                    st.attempt,
                )
            # phase changes bump the round's revision: wait for the next one
            self.client.current_round(self.fid, wait_s=_POLL_S, revision=status.revision)

    def _counted(self, number: int, status: RoundStatus) -> bool:
        """Whether round `number`, no longer open, aggregates this client's masked input."""
        if status.round >= number:
            st = self.state(number)
            if st.phase == "done" and self.me in st.survivors:
                return True
        log.info("round %d: aggregated without this client's masked input", number)
        return False

    def step(self, number: int, st: SecaggState, delta_path: Path, num_examples: int) -> str | None:
        """Do what the phase asks of this client if it has not yet; why the attempt goes on
        without this client when it does (None while the client takes part in it)."""
        done = set(st.done)
        if st.phase == "advertise":
            if "keys" not in done:
                self.advertise(number, st.attempt)
                log.info(
                    "round %d: secure aggregation keys advertised (attempt %d)", number, st.attempt
                )
            return None
        if st.phase == "done":
            return None  # the round is aggregating: `run` sees it closed
        if not st.in_cohort:
            return "not in the attempt's cohort (its keys came after the cohort was drawn)"
        if st.phase == "share":
            if "shares" not in done:
                self._post(number, "/shares", self.share_body(number, st))
                log.info("round %d: %d encrypted shares sent", number, len(st.neighbours))
            return None
        if self.me not in st.shared:
            return "not among the clients that shared keys in the attempt"
        if st.phase == "input":
            if "input" not in done:
                self.received(number, st)
                path = self.masked_input(number, st, delta_path, num_examples)
                self.upload_masked(number, st.attempt, path)
                log.info("round %d: masked input accepted", number)
            return None
        if self.me not in st.survivors:
            return "not among the clients whose masked input counts in the attempt"
        if "unmask" not in done:
            self._post(number, "/unmask", self.unmask_body(number, st))
            log.info("round %d: unmasking shares sent", number)
        return None
