"""The codec refuses hostile safetensors headers and metrics with a `BlobError`, never
another exception: nesting deep enough to exhaust the JSON parser, non-finite or absurd
metrics, metrics that are not a flat object of numbers."""

from __future__ import annotations

import struct

import pytest
import torch

from shared.blobs import (
    DELTA_FORMAT,
    MAX_METRIC_ABS,
    BlobError,
    DeltaMetadata,
    encode_state,
    header_length,
    parse_header,
)


def _file(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


# name -> (header JSON, message fragment)
HEADERS: dict[str, tuple[bytes, str]] = {
    "nested_objects": (b'{"a":' * 100_000, "nested too deeply"),
    "nested_arrays": (b"[" * 1_000_000, "nested too deeply"),
    "nested_in_an_entry": (b'{"w": {"dtype": ' + b"[" * 200_000, "nested too deeply"),
    "huge_integer": (b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b"]}}", "not valid JSON"),
    "not_utf8": (b'{"\xff": 1}', "not valid JSON"),
}


@pytest.mark.parametrize("case", HEADERS, ids=list(HEADERS))
def test_hostile_header_is_a_blob_error(case: str):
    header, fragment = HEADERS[case]
    data = _file(header)

    with pytest.raises(BlobError, match=fragment):
        parse_header(data, len(data))


# name -> (tensor entry JSON, bytes of data, message fragment): JSON values of the wrong type,
# each in a file whose sizes would otherwise add up (true and false load as Python ints)
ENTRIES: dict[str, tuple[str, int, str]] = {
    "shape_true": ('{"dtype": "F32", "shape": [true, 4], "data_offsets": [0, 16]}', 16, "shape"),
    "shape_false": ('{"dtype": "F32", "shape": [false, 4], "data_offsets": [0, 0]}', 0, "shape"),
    "shape_float": ('{"dtype": "F32", "shape": [1.0, 4], "data_offsets": [0, 16]}', 16, "shape"),
    "shape_string": ('{"dtype": "F32", "shape": ["1"], "data_offsets": [0, 4]}', 4, "shape"),
    "offsets_bools": ('{"dtype": "U8", "shape": [], "data_offsets": [false, true]}', 1, "offsets"),
    "offsets_float": ('{"dtype": "U8", "shape": [1], "data_offsets": [0, 1.0]}', 1, "offsets"),
    "dtype_list": ('{"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}', 4, "dtype"),
    "dtype_object": ('{"dtype": {"F32": 1}, "shape": [1], "data_offsets": [0, 4]}', 4, "dtype"),
}


@pytest.mark.parametrize("case", ENTRIES, ids=list(ENTRIES))
def test_a_tensor_entry_with_values_of_the_wrong_json_type_is_a_blob_error(case: str):
    entry, size, field = ENTRIES[case]
    data = _file(f'{{"w": {entry}}}'.encode()) + bytes(size)

    with pytest.raises(BlobError, match=rf"tensor 'w': .*{field}"):
        parse_header(data, len(data))


def _meta(metrics: str) -> dict[str, str]:
    return {
        "format": DELTA_FORMAT,
        "federation": "fed_a",
        "round": "1",
        "base_version": "0" * 64,
        "num_examples": "3",
        "metrics": metrics,
    }


# name -> (metrics JSON, message fragment)
METRICS: dict[str, tuple[str, str]] = {
    "nested_arrays": ("[" * 100_000, "nested too deeply"),
    "nested_objects": ('{"a":' * 100_000, "nested too deeply"),
    "nan": ('{"val_accuracy": NaN}', "'val_accuracy' is nan"),
    "infinity": ('{"train_loss": Infinity}', "'train_loss' is inf"),
    "minus_infinity": ('{"train_loss": -Infinity}', "'train_loss' is -inf"),
    "overflows_to_inf": ('{"loss": 1e999}', "'loss' is inf"),
    "absurd": ('{"loss": 1e300}', "at most"),
    "huge_integer": ('{"loss": ' + "9" * 400 + "}", "at most"),
    "too_many_digits": ('{"loss": ' + "9" * 5000 + "}", "not valid JSON"),
    "string": ('{"loss": "0.5"}', "'loss' must be a number"),
    "bool": ('{"ok": true}', "'ok' must be a number"),
    "null": ('{"loss": null}', "'loss' must be a number"),
    "nested_object": ('{"loss": {"a": 1}}', "'loss' must be a number"),
    "list": ("[0.5]", "must be a JSON object"),
    "not_json": ("loss=0.5", "not valid JSON"),
}


@pytest.mark.parametrize("case", METRICS, ids=list(METRICS))
def test_hostile_metrics_are_a_blob_error_naming_the_problem(case: str):
    metrics, fragment = METRICS[case]

    with pytest.raises(BlobError, match=fragment):
        DeltaMetadata.from_safetensors(_meta(metrics))


def test_finite_metrics_within_the_bound_are_read_as_floats():
    meta = DeltaMetadata.from_safetensors(_meta(f'{{"a": 0.5, "b": 3, "c": -{MAX_METRIC_ABS}}}'))

    assert meta.metrics == {"a": 0.5, "b": 3.0, "c": -MAX_METRIC_ABS}


def test_a_header_still_arriving_declares_the_size_of_its_body():
    data = encode_state({"b": torch.zeros(3), "a": torch.zeros(2, 2)}, _meta("{}"))
    head = data[: 8 + header_length(data)]

    header = parse_header(head)

    assert header.total_size == len(data)
    assert sorted(header.tensors) == ["a", "b"]


def test_a_header_still_arriving_must_tile_its_data_from_zero():
    header = b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}'

    with pytest.raises(BlobError, match="leaves a gap"):
        parse_header(_file(header))


def test_header_length_past_the_limit_is_refused_from_the_first_8_bytes():
    with pytest.raises(BlobError, match="the limit is 1024"):
        header_length(struct.pack("<Q", 4096), max_header=1024)
