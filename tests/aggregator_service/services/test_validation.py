"""The NaN/Inf check reads a delta in slices: a bad value anywhere is found, in every dtype."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
import yaml

from aggregator_service.services.errors import Invalid, Malformed
from aggregator_service.services.validation import _CHECK_CHUNK_BYTES, DeltaTarget, validate_delta
from shared.api import TensorInfo
from shared.blobs import DeltaMetadata, encode_state
from shared.spec import FederationSpec, parse_spec

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
SLICE = _CHECK_CHUNK_BYTES  # the boundaries below are the check's own slices
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# where in the large tensor the bad value sits (element index from its size n and itemsize b)
POSITIONS = {
    "first": lambda n, b: 0,
    "last_of_first_slice": lambda n, b: SLICE // b - 1,
    "first_of_second_slice": lambda n, b: SLICE // b,
    "last": lambda n, b: n - 1,
}
BAD = {"nan": (float("nan"), "NaN"), "inf": (float("inf"), "Inf"), "-inf": (float("-inf"), "Inf")}


def _spec(dtype: str, max_abs_value: float | None = None) -> FederationSpec:
    """The tiny spec in `dtype`, without a magnitude bound unless one is given."""
    raw = yaml.safe_load((EXAMPLES / "tiny-clip-bias.yaml").read_text())
    raw["transport"] = {"dtype": dtype}
    raw["aggregation"] = {**raw.get("aggregation", {}), "max_abs_value": max_abs_value}
    return parse_spec(raw)


def _delta(tmp_path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    meta = DeltaMetadata(federation="fed_v", round=1, base_version="0" * 64, num_examples=3)
    path = tmp_path / "delta.safetensors"
    path.write_bytes(encode_state(tensors, meta.to_safetensors()))
    return path


def _tensors(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A small tensor and one spanning three slices, odd-sized, values finite."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    n = (2 * SLICE + 12_345) // itemsize + 1
    gen = torch.Generator().manual_seed(0)
    return {
        "a": torch.randn(7, generator=gen).to(dtype),
        "b": torch.randn(n, generator=gen).to(dtype),
    }


def _check(path: Path, tensors: dict[str, torch.Tensor], dtype: str) -> DeltaMetadata:
    manifest = {k: TensorInfo(shape=list(t.shape), dtype=dtype) for k, t in tensors.items()}
    return validate_delta(path, DeltaTarget(_spec(dtype), manifest, "fed_v", 1, 10**6))


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("where", POSITIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_non_finite_value_in_any_slice_is_refused(tmp_path, dtype, where, bad):
    tensors = _tensors(DTYPES[dtype])
    big = tensors["b"]
    big[POSITIONS[where](big.numel(), big.element_size())] = BAD[bad][0]

    with pytest.raises(Invalid) as refused:
        _check(_delta(tmp_path, tensors), tensors, dtype)

    assert type(refused.value) is Invalid
    assert str(refused.value) == f"tensor 'b' contains {BAD[bad][1]} values"


@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_extremes_across_slices_pass(tmp_path, dtype):
    tensors = _tensors(DTYPES[dtype])
    info = torch.finfo(DTYPES[dtype])
    big = tensors["b"]
    for i, value in enumerate((info.max, info.min, info.tiny, info.smallest_normal / 4, 0.0)):
        big[i * (SLICE // big.element_size()) // 2] = value

    meta = _check(_delta(tmp_path, tensors), tensors, dtype)

    assert (meta.federation, meta.round, meta.num_examples) == ("fed_v", 1, 3)


@pytest.mark.parametrize("value", [2.0e4, -3.0e38])
def test_a_value_beyond_max_abs_value_is_refused_naming_the_tensor(tmp_path, value):
    tensors = _tensors(torch.float32)
    tensors["b"][SLICE // 4 + 17] = value

    with pytest.raises(Invalid) as refused:
        validate_delta(
            _delta(tmp_path, tensors),
            DeltaTarget(
                _spec("float32", max_abs_value=1e4),
                {k: TensorInfo(shape=list(t.shape), dtype="float32") for k, t in tensors.items()},
                "fed_v",
                1,
                10**6,
            ),
        )

    assert refused.value.error == "invalid_update"
    assert str(refused.value).startswith("tensor 'b' holds a value of magnitude")
    assert "max_abs_value is 10000" in str(refused.value)


def test_values_within_max_abs_value_pass(tmp_path):
    tensors = _tensors(torch.float32)
    tensors["b"][3] = -1e4
    manifest = {k: TensorInfo(shape=list(t.shape), dtype="float32") for k, t in tensors.items()}
    target = DeltaTarget(_spec("float32", max_abs_value=1e4), manifest, "fed_v", 1, 10**6)
    assert validate_delta(_delta(tmp_path, tensors), target).round == 1


def test_the_default_spec_bounds_magnitudes():
    raw = yaml.safe_load((EXAMPLES / "tiny-clip-bias.yaml").read_text())
    assert parse_spec(raw).aggregation.max_abs_value == 1e4


def test_a_shape_of_json_true_is_refused_although_the_manifest_says_1(tmp_path):
    meta = DeltaMetadata(federation="fed_v", round=1, base_version="0" * 64, num_examples=3)
    header = {
        "__metadata__": meta.to_safetensors(),
        "w": {"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]},
    }
    raw = json.dumps(header).encode()
    path = tmp_path / "delta.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(16))
    manifest = {"w": TensorInfo(shape=[1, 4], dtype="float32")}

    with pytest.raises(Malformed) as refused:
        validate_delta(path, DeltaTarget(_spec("float32"), manifest, "fed_v", 1, 10**6))

    assert refused.value.error == "invalid_update"
    assert "tensor 'w': shape must be a list of non-negative integers" in str(refused.value)
