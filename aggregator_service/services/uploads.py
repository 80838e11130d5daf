"""Receiving a client's delta: stream to a temp file, validate, then commit atomically.

The body is hashed while it is written and never held in memory. Its safetensors header
is checked against the federation's manifest as soon as it has arrived, so a wrong upload
is refused before the rest of it is read, and the body may then be no longer than the
size its header declares. Until the
final transaction nothing is visible: a refused upload leaves no row, no blob
and no counter change. The blob is renamed into the store inside the
transaction that inserts its row, so a committed row always has its blob; a
commit that fails leaves the blob in place (it may have been applied all the
same), and a retry with the same bytes restores a blob found missing.

A client revoked while its upload streams is refused at the commit, which reads
the client's row under a lock: a revocation commits before it (and is seen) or
after it (and the update was accepted before the revocation).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Connection, Row, insert, select, update
from sqlalchemy.exc import IntegrityError

from aggregator_service.services.access import refuse_revoked
from aggregator_service.services.context import Core, now
from aggregator_service.services.errors import Conflict, TimedOut, TooLarge
from aggregator_service.services.lifecycle import refuse_unless_running
from aggregator_service.services.rounds import (
    federation_status,
    quorum_transition,
    read_status,
    the_round,
)
from aggregator_service.services.validation import (
    DeltaTarget,
    check_header,
    not_safetensors,
    validate_delta,
)
from aggregator_service.storage.tables import (
    INT_MAX,
    federations,
    rounds,
    state_versions,
    updates,
)
from shared.api import RoundState, RoundStatus, TensorInfo, UpdateReceipt
from shared.blobs import (
    BlobError,
    DeltaMetadata,
    header_length,
    page_buffer,
    parse_header,
    torch_dtype,
)
from shared.spec import FederationSpec

__all__ = [
    "Expected",
    "Received",
    "expected_upload",
    "ingest",
    "largest_update_bytes",
    "receive_body",
]

log = logging.getLogger("fedtune.server")

_WRITE_BATCH = 1 << 20
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Received:
    path: Path
    sha256: str
    size: int


def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"update body exceeds the server's limit of {limit} bytes")


def _past_header(size: int) -> TooLarge:
    return TooLarge(
        f"update body is longer than the {size} bytes its safetensors header declares "
        "(length prefix, header and tensor data); send the file exactly"
    )


class _Head:
    """Collects a body's first bytes until its safetensors header is whole (at most
    8 bytes and `MAX_HEADER_BYTES`: a longer header is refused as its length arrives),
    for `expected` to check."""

    def __init__(self, expected: Expected) -> None:
        self.expected = expected
        self.buf = bytearray()
        self.need: int | None = None  # 8 + the header's length, once the length has arrived

    def feed(self, chunk: bytes) -> bytes | None:
        """The length prefix and header once both have arrived, else None; `BlobError`."""
        pos = 0
        while True:
            want = 8 if self.need is None else self.need
            take = min(want - len(self.buf), len(chunk) - pos)
            self.buf += chunk[pos : pos + take]
            pos += take
            if len(self.buf) < want:
                return None
            if self.need is not None:
                return bytes(self.buf)
            self.need = 8 + header_length(bytes(self.buf))


@dataclass(frozen=True)
class Expected:
    """What an upload to one federation's round must look like (`expected_upload`)."""

    core: Core
    fid: str
    number: int
    spec: FederationSpec
    manifest: dict[str, TensorInfo]

    def size_of(self, head: bytes, declared: int | None) -> int:
        """Check a header that has just arrived (blocking); the exact body size it implies.

        Raises what `validate_delta` would for the same header, or `TooLarge` when the
        Content-Length (`declared`) or the header itself says more than may come.
        """
        try:
            header = parse_header(head)
            if declared is not None and declared < header.total_size:
                parse_header(head, declared)  # raises, saying what the short body lacks
        except BlobError as exc:
            raise not_safetensors(exc) from None
        most = self.core.settings.max_num_examples
        check_header(header, DeltaTarget(self.spec, self.manifest, self.fid, self.number, most))
        if declared is not None and declared > header.total_size:
            raise _past_header(header.total_size)
        if header.total_size > self.core.settings.max_upload_bytes:
            raise _too_large(self.core.settings.max_upload_bytes)
        return header.total_size


def expected_upload(core: Core, fid: str, number: int) -> Expected:
    """The manifest and spec an upload to round `number` of `fid` is checked against."""
    if core.spec(fid).secure_aggregation is not None:
        raise Conflict(
            f"federation {fid} uses secure aggregation: send a masked input through "
            f"/v1/federations/{fid}/rounds/{number}/secure-aggregation, never a plain delta",
            error="secure_aggregation_only",
        )
    with core.db.read() as conn:
        manifest = _manifest(conn, fid)
    return Expected(core, fid, number, core.spec(fid), manifest)


def largest_update_bytes(core: Core) -> int:
    """The largest update a running federation accepts (its manifest in the transport dtype):
    what one upload needs on disk, for readiness to compare free space against."""
    with core.db.read() as conn:
        rows = conn.execute(
            select(federations.c.id, federations.c.manifest).where(
                federations.c.status.in_(("running", "paused"))
            )
        ).all()
    largest = 0
    for row in rows:
        itemsize = torch_dtype(core.spec(row.id).transport.dtype).itemsize
        numel = sum(math.prod(info["shape"]) for info in json.loads(row.manifest).values())
        largest = max(largest, numel * itemsize)
    return largest


def _manifest(conn: Connection, fid: str) -> dict[str, TensorInfo]:
    text: str = conn.execute(
        select(federations.c.manifest).where(federations.c.id == fid)
    ).scalar_one()
    return {k: TensorInfo.model_validate(v) for k, v in json.loads(text).items()}


class _Spool:
    """Writes a body to an open file through one fixed buffer, hashing it on the way.

    The buffer is mapped once per upload and refilled; a worker thread hashes
    and writes each full one. So an upload holds the same memory whatever its
    size, with no per-batch copies for the allocator to fragment.
    """

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0
        self._buf = memoryview(page_buffer(_WRITE_BATCH))
        self._filled = 0

    async def add(self, chunk: bytes) -> None:
        data = memoryview(chunk)
        self.size += len(data)
        while data:
            n = min(len(data), len(self._buf) - self._filled)
            self._buf[self._filled : self._filled + n] = data[:n]
            self._filled += n
            data = data[n:]
            if self._filled == len(self._buf):
                await self.flush()

    async def flush(self) -> None:
        if self._filled:
            await asyncio.to_thread(self._write, self._buf[: self._filled])
            self._filled = 0

    def _write(self, data: memoryview) -> None:
        self.sha.update(data)
        self.f.write(data)


async def receive_body(
    core: Core,
    chunks: AsyncIterator[bytes],
    content_length: str | None,
    expected: Expected | None = None,
) -> Received:
    """Stream the body into a temp file in the blob store, hashing it; `TooLarge` past the
    server's limit.

    With `expected`, it is also refused (`Malformed`, `Invalid`) as soon as its header has
    arrived and disagrees with the manifest, and (`TooLarge`) once it runs past the size
    that header declares. A worker thread hashes and writes each 1 MiB of it, so a large
    upload never blocks the event loop and is never held whole.
    """
    limit = core.settings.max_upload_bytes
    declared = int(content_length) if content_length and content_length.isdigit() else None
    if declared is not None and declared > limit:
        raise _too_large(limit)
    head = _Head(expected) if expected is not None else None
    too_large = _too_large(limit)
    tmp = core.blobs.new_temp()
    try:
        with open(tmp, "wb") as f:
            spool = _Spool(f)
            async for chunk in _paced(chunks, core, spool):
                if head is not None and (whole := _feed(head, chunk)) is not None:
                    limit = await asyncio.to_thread(head.expected.size_of, whole, declared)
                    head, too_large = None, _past_header(limit)
                if spool.size + len(chunk) > limit:
                    raise too_large
                await spool.add(chunk)
            await spool.flush()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Received(tmp, spool.sha.hexdigest(), spool.size)


# A body may start slowly (TLS, a client warming up) before the rate floor applies.
_RATE_GRACE_S = 10.0


async def _paced(chunks: AsyncIterator[bytes], core: Core, spool: _Spool) -> AsyncIterator[bytes]:
    """`chunks`, refused (`TimedOut`) after an idle gap of `upload_idle_s`, or when, after the
    grace period, the body has arrived slower than `upload_min_kib_s` on average."""
    settings = core.settings
    floor = settings.upload_min_kib_s * 1024
    loop = asyncio.get_running_loop()
    start = loop.time()
    it = aiter(chunks)
    while True:
        try:
            chunk = await asyncio.wait_for(anext(it), settings.upload_idle_s)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise TimedOut(
                f"no body bytes for {settings.upload_idle_s:g} s after {spool.size} bytes; "
                "the upload was dropped, send it again"
            ) from None
        elapsed = loop.time() - start
        if floor and elapsed > _RATE_GRACE_S and spool.size + len(chunk) < floor * elapsed:
            rate = (spool.size + len(chunk)) / elapsed / 1024
            raise TimedOut(
                f"upload body arriving at {rate:.1f} KiB/s, below the server's floor of "
                f"{settings.upload_min_kib_s:g} KiB/s; the upload was dropped, send it again"
            )
        yield chunk


def _feed(head: _Head, chunk: bytes) -> bytes | None:
    try:
        return head.feed(chunk)
    except BlobError as exc:
        raise not_safetensors(exc) from None


class _Retry(Exception):
    """The round or this client's row changed under us; re-evaluate from the top."""


def ingest(core: Core, client_id: str, fid: str, number: int, body: Received) -> UpdateReceipt:
    """Validate and commit one update (blocking). The temp file is consumed either way."""
    try:
        for _ in range(3):
            try:
                return _ingest_once(core, client_id, fid, number, body)
            except _Retry:
                continue
        raise Conflict("the round changed while the update was stored; retry")
    finally:
        body.path.unlink(missing_ok=True)


def _existing(conn: Connection, fid: str, number: int, client_id: str) -> Row | None:
    """This client's accepted update for the round (sha256, bytes, num_examples), if any."""
    if number > INT_MAX:  # no such round; the column type could not even hold the number
        return None
    return conn.execute(
        select(updates.c.sha256, updates.c.bytes, updates.c.num_examples).where(
            updates.c.federation_id == fid,
            updates.c.round == number,
            updates.c.client_id == client_id,
        )
    ).first()


def _progress(conn: Connection, fid: str, number: int) -> Row:
    """The round's `received` count and `status`."""
    return conn.execute(
        select(rounds.c.received, rounds.c.status).where(the_round(fid, number))
    ).one()


def _ingest_once(
    core: Core, client_id: str, fid: str, number: int, body: Received
) -> UpdateReceipt:
    spec = core.spec(fid)
    with core.db.read() as conn:
        refuse_revoked(conn, client_id)
        prior = _existing(conn, fid, number, client_id)
        status = read_status(conn, spec, fid, client_id)
        if prior is not None:
            receipt = _duplicate(conn, spec, client_id, fid, number, body, prior, status)
            core.blobs.commit_temp(body.path, body.sha256)  # the same bytes: restores a lost blob
            return receipt
        manifest = _manifest(conn, fid)
    refuse_unless_running(fid, status.federation_status, status)
    if number != status.round or status.status != "open":
        raise Conflict(_closed_detail(number, status), error="round_closed", round=status)
    target = DeltaTarget(spec, manifest, fid, number, core.settings.max_num_examples)
    meta = validate_delta(body.path, target)
    if meta.base_version != status.global_version:
        _refuse_base(core, fid, meta.base_version, status)
    received, state = _commit(core, client_id, fid, number, body, meta)
    core.metrics.updates_accepted.inc()
    core.metrics.bytes_in.inc(body.size)
    core.notifier.notify(fid)
    stored = (body.sha256, body.size, meta.num_examples)
    return _receipt(spec, fid, number, client_id, stored, False, received, state)


def _commit(
    core: Core, client_id: str, fid: str, number: int, body: Received, meta: DeltaMetadata
) -> tuple[int, RoundState]:
    """One transaction: bump the open round, insert the row, rename the blob into the store.

    The blob stays when the commit fails: a failed COMMIT may have been applied, and a blob
    no row names costs only its space (and is reused by the retry)."""
    with core.db.write() as conn:
        bumped = conn.execute(
            update(rounds)
            .where(the_round(fid, number, "open"))
            .values(
                received=rounds.c.received + 1,
                revision=rounds.c.revision + 1,
                bytes_in=rounds.c.bytes_in + body.size,
            )
        )
        if bumped.rowcount != 1:
            raise _Retry
        # Read after the round's row is ours: a pause or cancel either committed before
        # (and is seen here, in a statement of its own) or waits for this commit.
        if federation_status(conn, fid) != "running":
            raise _Retry
        refuse_revoked(conn, client_id, lock=True)
        try:
            conn.execute(
                insert(updates).values(
                    federation_id=fid,
                    round=number,
                    client_id=client_id,
                    sha256=body.sha256,
                    bytes=body.size,
                    num_examples=meta.num_examples,
                    metrics=json.dumps(meta.metrics, sort_keys=True),
                    received_at=now(),
                )
            )
        except IntegrityError:
            raise _Retry from None
        met = quorum_transition(conn, core.spec(fid), fid, number)
        row = _progress(conn, fid, number)
        core.blobs.commit_temp(body.path, body.sha256)
    if met:
        log.info("federation %s round %d: aggregating (quorum)", fid, number)
    return int(row.received), row.status


def _closed_detail(number: int, status: RoundStatus) -> str:
    if number > status.round:
        return f"round {number} has not opened yet; the current round is {status.round}"
    if number < status.round:
        return f"round {number} is closed; the current round is {status.round}"
    return f"round {number} is {status.status} and no longer accepts updates"


def _refuse_base(core: Core, fid: str, base_version: str, status: RoundStatus) -> None:
    known = None
    if _DIGEST.fullmatch(base_version):  # anything else names no state (and may hold a NUL)
        with core.db.read() as conn:
            known = conn.execute(
                select(state_versions.c.round).where(
                    state_versions.c.federation_id == fid, state_versions.c.digest == base_version
                )
            ).first()
    if known is None:
        raise Conflict(
            f"base_version {base_version[:16]}… is not a global version of this federation; "
            f"download the current state ({status.global_version[:16]}…) and retrain",
            error="stale_base_version",
            round=status,
        )
    raise Conflict(
        f"update was built on the global state after round {known.round}; round "
        f"{status.round} trains from {status.global_version[:16]}…: download it and retrain",
        error="stale_base_version",
        round=status,
    )


def _duplicate(
    conn: Connection,
    spec: FederationSpec,
    client_id: str,
    fid: str,
    number: int,
    body: Received,
    prior: Row,
    status: RoundStatus,
) -> UpdateReceipt:
    """The receipt of an update already accepted (same bytes); `Conflict` for different bytes."""
    if prior.sha256 != body.sha256:
        raise Conflict(
            f"this client already submitted a different update ({prior.sha256[:16]}…) for round "
            f"{number}; an update cannot be replaced",
            round=status,
        )
    rnd = _progress(conn, fid, number)
    stored = (prior.sha256, prior.bytes, prior.num_examples)
    return _receipt(spec, fid, number, client_id, stored, True, rnd.received, rnd.status)


def _receipt(
    spec: FederationSpec,
    fid: str,
    number: int,
    client_id: str,
    stored: tuple[str, int, int],
    duplicate: bool,
    received: int,
    state: RoundState,
) -> UpdateReceipt:
    """The answer to an upload; `stored` is the accepted update's (sha256, bytes, num_examples)."""
    sha256, size, num_examples = stored
    return UpdateReceipt(
        federation_id=fid,
        round=number,
        client_id=client_id,
        sha256=sha256,
        bytes=size,
        num_examples=num_examples,
        duplicate=duplicate,
        received=received,
        quorum=spec.rounds.quorum,
        round_status=state,
    )
