"""The safetensors codec: headers checked before any tensor is touched."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load

from shared.blobs import (
    DELTA_FORMAT,
    Blob,
    BlobError,
    DeltaMetadata,
    atomic_save_state,
    atomic_write_bytes,
    encode_state,
    parse_header,
    read_header,
    sha256_file,
)


def _raw(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}

BAD_BODIES = [
    ("empty", b"", "shorter than"),
    ("pickle", pickle.dumps({"a": [1.0, 2.0]}), "header"),
    ("not json", struct.pack("<Q", 4) + b"\xff\xfe{}" + b"\0" * 8, "not valid JSON"),
    ("header beyond body", struct.pack("<Q", 500) + b"{}", "runs past the end"),
    ("header over limit", struct.pack("<Q", (1 << 20) + 1) + b" " * 16, "limit"),
    ("truncated data", _raw(GOOD, b"\0" * 4), "out of range"),
    ("padded data", _raw(GOOD, b"\0" * 12), "body holds"),
    (
        "overlap",
        _raw(
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
            },
            b"\0" * 8,
        ),
        "overlaps",
    ),
    ("gap", _raw({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), "gap"),
    (
        "size vs shape",
        _raw({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
        "do not match",
    ),
    (
        "bad dtype",
        _raw({"a": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
        "unsupported dtype",
    ),
    (
        "negative dim",
        _raw({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8),
        "non-negative",
    ),
    (
        "metadata not strings",
        _raw({**GOOD, "__metadata__": {"round": 3}}, b"\0" * 8),
        "__metadata__",
    ),
]


@pytest.mark.parametrize(("case", "body", "message"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_malformed_payload_is_refused_with_a_reason(case: str, body: bytes, message: str) -> None:
    with pytest.raises(BlobError, match=message):
        parse_header(body[: 8 + (1 << 20)], len(body))


def test_header_of_encoded_state_lists_every_tensor() -> None:
    state = {
        "w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b": torch.ones(3, dtype=torch.bfloat16),
    }
    body = encode_state(state, {"k": "v"})
    header = parse_header(body, len(body))
    assert {n: (t.dtype, t.shape) for n, t in header.tensors.items()} == {
        "w": ("float32", (2, 3)),
        "b": ("bfloat16", (3,)),
    }
    assert header.metadata == {"k": "v"}
    assert header.total_size == len(body)
    assert torch.equal(load(body)["w"], state["w"])


def test_read_header_matches_parse_header(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    atomic_save_state(path, {"x": torch.randn(4), "y": torch.ones(2, 3)}, {"format": "t"})
    header = read_header(path)
    assert header == parse_header(path.read_bytes(), path.stat().st_size)
    assert header.tensors["x"].shape == (4,)
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_write_leaves_only_the_final_file(tmp_path: Path) -> None:
    target = tmp_path / "d" / "blob"
    atomic_write_bytes(target, b"hello")
    assert target.read_bytes() == b"hello"
    assert [p.name for p in target.parent.iterdir()] == ["blob"]
    assert sha256_file(target) == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


def test_delta_metadata_round_trips_through_safetensors_strings() -> None:
    meta = DeltaMetadata(
        federation="fed_1",
        round=2,
        base_version="ab" * 32,
        num_examples=10,
        metrics={"train_loss": 0.5},
    )
    raw = meta.to_safetensors()
    assert all(isinstance(v, str) for v in raw.values())
    assert DeltaMetadata.from_safetensors(raw) == meta


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other/1"}, "format"),
        ({"round": "two"}, "round"),
        ({"num_examples": "0"}, "num_examples"),
        ({"num_examples": "-5"}, "num_examples"),
        ({"metrics": "{not json"}, "metrics"),
        ({"surprise": "x"}, "surprise"),
    ],
)
def test_bad_delta_metadata_names_the_key(change: dict[str, str], message: str) -> None:
    raw = DeltaMetadata(
        federation="f", round=1, base_version="0" * 64, num_examples=1
    ).to_safetensors()
    raw.update(change)
    with pytest.raises(BlobError, match=message):
        DeltaMetadata.from_safetensors(raw)


def test_missing_num_examples_is_named() -> None:
    raw = {"format": DELTA_FORMAT, "federation": "f", "round": "1", "base_version": "0" * 64}
    with pytest.raises(BlobError, match="num_examples"):
        DeltaMetadata.from_safetensors(raw)


def test_same_state_and_metadata_always_encode_to_the_same_bytes(tmp_path: Path) -> None:
    state = {"b": torch.randn(3), "a": torch.arange(4, dtype=torch.bfloat16)}
    meta = DeltaMetadata(
        federation="f", round=1, base_version="0" * 64, num_examples=7
    ).to_safetensors()
    encodings = {encode_state(state, meta) for _ in range(10)}
    atomic_save_state(tmp_path / "d.safetensors", state, meta)
    assert encodings == {(tmp_path / "d.safetensors").read_bytes()}
    loaded = load(encodings.pop())
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_a_blob_in_memory_reads_like_the_same_file(tmp_path: Path) -> None:
    state = {"a": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.ones(5)}
    path = tmp_path / "state.safetensors"
    atomic_save_state(path, state)
    on_disk, in_memory = Blob.open(path), Blob.from_buffer(path.read_bytes())
    assert in_memory.names() == on_disk.names() == ["a", "b"]
    for name, tensor in state.items():
        assert torch.equal(in_memory.tensor(name), tensor)
        sliced = torch.cat([s.clone() for s in in_memory.slices(name, bytearray(8))])
        assert torch.equal(sliced, tensor.flatten())
    assert all(torch.equal(in_memory.load()[k], v) for k, v in state.items())
