"""An upload body streamed in chunks of any size lands in the blob store's temp file whole."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator

import pytest

from aggregator_service.main import build_core
from aggregator_service.services.errors import TooLarge
from aggregator_service.services.uploads import receive_body
from aggregator_service.settings import Settings

MIB = 1 << 20
# chunk sizes around and across the 1 MiB write buffer
CHUNKINGS = {
    "one_byte_then_large": [1, 3 * MIB, 17],
    "odd_small": [100_003] * 40,
    "exact_buffer": [MIB, MIB, MIB],
    "just_over_buffer": [MIB + 1, MIB - 1, 2 * MIB + 5],
    "empty_chunks_between": [0, 700_000, 0, 700_000, 0],
}


async def _chunks(body: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    at = 0
    for size in sizes:
        yield body[at : at + size]
        at += size


@pytest.mark.parametrize("sizes", CHUNKINGS.values(), ids=list(CHUNKINGS))
def test_body_in_any_chunking_is_written_whole_with_its_hash(tmp_path, sizes):
    core = build_core(
        Settings(data_dir=tmp_path, admin_token="fta_receive-body-0123456789abcdef0123")
    )
    body = random.Random(len(sizes)).randbytes(sum(sizes))

    received = asyncio.run(receive_body(core, _chunks(body, sizes), str(len(body))))

    assert received.size == len(body)
    assert received.sha256 == hashlib.sha256(body).hexdigest()
    assert received.path.read_bytes() == body


def test_body_past_the_limit_mid_stream_is_refused_and_leaves_no_temp_file(tmp_path):
    core = build_core(
        Settings(
            data_dir=tmp_path, admin_token="fta_receive-body-0123456789abcdef0123", max_upload_mb=2
        )
    )
    body = bytes(3 * MIB)

    with pytest.raises(TooLarge):
        asyncio.run(receive_body(core, _chunks(body, [MIB] * 3), None))

    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []
