"""Secure aggregation's step 2 on the service: a client's masked input.

A safetensors file of words (the masked sum modulo 2^modulus_bits: int32 holding the word's
bits when the modulus is 2^32, int64 holding 0..2^modulus_bits-1 otherwise; see
`shared.secagg.masking.FixedPoint`), one tensor per manifest entry with the manifest's
shapes, and `__metadata__` format `fedtune-masked/1`, federation, round, attempt,
num_examples (in the clear: the service divides the sum by the survivors' total) and metrics
(JSON). It streams through the upload path
(services/uploads.py): the header is checked as soon as it arrives and the body may be no
longer than it declares; nothing is parsed with pickle and nothing is kept when it is refused.
As with a plain update, the blob is placed in the transaction that records the input and stays
when its COMMIT fails (it may have been applied all the same); the same input sent again is
answered as a repeat and puts back a blob found missing.
"""

from __future__ import annotations

from dataclasses import dataclass

from aggregator_service.services.access import refuse_revoked
from aggregator_service.services.context import Core
from aggregator_service.services.errors import Invalid
from aggregator_service.services.secagg.round import accused, load_round, secure_spec, steps
from aggregator_service.services.secagg.steps import client_step
from aggregator_service.services.uploads import Expected, Received, _manifest
from aggregator_service.services.validation import not_safetensors
from aggregator_service.storage.tables import INT_MAX
from shared.api import SecaggReceipt
from shared.blobs import Blob, BlobError, SafetensorsHeader, _metrics, parse_header
from shared.secagg.masking import FixedPoint
from shared.secagg.protocol import MASKED_FORMAT

__all__ = ["MaskedExpected", "expected_masked", "ingest_masked"]


def _invalid(detail: str) -> Invalid:
    return Invalid(detail, error="invalid_masked_input")


@dataclass(frozen=True)
class MaskedExpected(Expected):
    """What a masked input to one secure round must look like."""

    attempt: int

    def size_of(self, head: bytes, declared: int | None) -> int:
        try:
            header = parse_header(head)
        except BlobError as exc:
            raise not_safetensors(exc) from None
        check_masked_header(header, self, self.core.settings.max_num_examples)
        size = header.total_size
        if declared is not None and declared != size:
            raise _invalid(
                f"Content-Length {declared} differs from the {size} bytes the safetensors "
                "header declares; send the file exactly"
            )
        return size


def check_masked_header(header: SafetensorsHeader, exp: MaskedExpected, most: int) -> None:
    names, want = set(header.tensors), set(exp.manifest)
    if names != want:
        missing, extra = sorted(want - names), sorted(names - want)
        raise _invalid(
            f"masked input tensors must be exactly the manifest's (missing: {missing[:3]}, "
            f"unexpected: {extra[:3]})"
        )
    sa = exp.spec.secure_aggregation
    assert sa is not None
    word = str(FixedPoint(sa.scale_bits, sa.modulus_bits).wire)
    for name in sorted(names):
        entry = header.tensors[name]
        if entry.dtype != word or list(entry.shape) != list(exp.manifest[name].shape):
            raise _invalid(
                f"tensor {name!r} is {entry.dtype} {list(entry.shape)}; a masked input holds "
                f"{word} words (modulus 2^{sa.modulus_bits}) of the manifest's shape "
                f"{exp.manifest[name].shape}"
            )
    meta = header.metadata
    checks = {
        "format": MASKED_FORMAT,
        "federation": exp.fid,
        "round": str(exp.number),
        "attempt": str(exp.attempt),
    }
    for key, value in checks.items():
        if meta.get(key) != value:
            raise _invalid(f"metadata {key!r} must be {value!r}, got {meta.get(key)!r:.80}")
    n = meta.get("num_examples", "")
    if not n.isdigit() or not 1 <= int(n) <= most:
        raise _invalid(f"metadata 'num_examples' must be an integer in 1..{most}, got {n!r:.40}")


def expected_masked(core: Core, fid: str, number: int, attempt: int) -> MaskedExpected:
    secure_spec(core, fid)
    with core.db.read() as conn:
        manifest = _manifest(conn, fid)
    return MaskedExpected(core, fid, number, core.spec(fid), manifest, attempt)


def _check_words(blob: Blob, names: list[str], bits: int) -> None:
    """int64 words must lie in 0..2^bits-1; every int32 (2^32) or int64 (2^64) is a word."""
    if bits in (32, 64):
        return
    top = (1 << bits) - 1
    for name in names:
        words = blob.tensor(name).reshape(-1).numpy()
        if words.size and (int(words.min()) < 0 or int(words.max()) > top):
            raise _invalid(f"tensor {name!r} holds words outside 0..2^{bits}-1")


def ingest_masked(
    core: Core, client_id: str, fid: str, number: int, attempt: int, body: Received
) -> SecaggReceipt:
    """Validate and keep one masked input (blocking); the temp file is consumed either way."""
    sa = secure_spec(core, fid)
    try:
        repeat = _repeat(core, client_id, fid, number, attempt, body)
        if repeat is not None:
            return repeat
        blob = Blob.open(body.path)
        try:
            meta = dict(blob.metadata)
            _check_words(blob, sorted(blob.tensors), sa.modulus_bits)
            try:
                metrics = _metrics(meta.get("metrics", "{}"))
            except BlobError as exc:
                raise _invalid(str(exc)) from None
        finally:
            blob.close()
        payload = {
            "sha256": body.sha256,
            "bytes": body.size,
            "num_examples": int(meta["num_examples"]),
            "metrics": metrics,
        }
        with client_step(core, fid, number, client_id, attempt, "input", "input") as step:
            if client_id in accused(step.conn, step.rnd):
                raise Invalid(
                    f"a share this client sent in round {number} failed authentication at "
                    "its recipient; its masked input is not taken",
                    error="secagg_accused",
                )
            step.record(body.sha256, payload)
            core.blobs.commit_temp(body.path, body.sha256)  # also puts back a repeat's lost blob
    finally:
        body.path.unlink(missing_ok=True)
    core.metrics.bytes_in.inc(body.size)
    return step.receipt


def _repeat(
    core: Core, client_id: str, fid: str, number: int, attempt: int, body: Received
) -> SecaggReceipt | None:
    """The answer to a masked input this client already sent, byte for byte, in the round's
    current attempt, whatever phase the attempt reached since (the commit that recorded it may
    have failed to answer); its blob is put back if it went missing. None for any other body."""
    spec = core.spec(fid)
    with core.db.read() as conn:
        refuse_revoked(conn, client_id)
        rnd = load_round(conn, spec, fid, number) if number <= INT_MAX else None
        if rnd is None or rnd.attempt != attempt:
            return None
        prior = steps(conn, rnd, "input").get(client_id)
    if prior is None or prior["sha256"] != body.sha256:
        return None
    core.blobs.commit_temp(body.path, body.sha256)
    return SecaggReceipt(step="input", attempt=attempt, duplicate=True, phase=rnd.phase)
