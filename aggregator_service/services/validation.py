"""Checks on an uploaded delta before it is accepted: format, metadata, manifest, values.

The header's checks (`check_header`) run as soon as an upload's header has arrived, and
all of them (`validate_delta`) on the temp file the body was streamed into, through the
codec (`shared.blobs.Blob`). Values are read with plain file reads into one small
fixed buffer and checked into another, so checking a
delta costs the same memory whatever its size (512 KiB per worker thread
checking one). Nothing is ever unpickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from aggregator_service.services.errors import Invalid, Malformed
from shared.api import TensorInfo
from shared.blobs import (
    Blob,
    BlobError,
    DeltaMetadata,
    SafetensorsHeader,
    page_buffer,
    torch_dtype,
)
from shared.spec import FederationSpec

__all__ = ["DeltaTarget", "check_header", "not_safetensors", "validate_delta"]

_SHOW = 5
_CHECK_CHUNK_BYTES = 1 << 18  # small: 6 threads checking at once hold 3 MiB


def _invalid(detail: str) -> Invalid:
    return Invalid(detail, error="invalid_update")


def _malformed(detail: str) -> Malformed:
    return Malformed(detail, error="invalid_update")


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOW])
    return shown + (f" (and {len(names) - _SHOW} more)" if len(names) > _SHOW else "")


def _check_tensors(
    header: SafetensorsHeader, manifest: Mapping[str, TensorInfo], dtype: str
) -> None:
    missing = sorted(set(manifest) - set(header.tensors))
    extra = sorted(set(header.tensors) - set(manifest))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensors: {_names(missing)}")
        if extra:
            parts.append(f"unexpected tensors: {_names(extra)}")
        raise _invalid("; ".join(parts) + " (keys must be exactly the federation manifest)")
    for name in sorted(manifest):
        entry, want = header.tensors[name], manifest[name]
        if list(entry.shape) != list(want.shape):
            raise _invalid(
                f"tensor {name!r} has shape {list(entry.shape)}; the manifest says {want.shape}",
            )
        if entry.dtype != dtype:
            raise _invalid(
                f"tensor {name!r} is {entry.dtype}; this federation's transport.dtype is {dtype}",
            )


def _check_finite(blob: Blob, names: list[str], max_abs: float | None = None) -> None:
    """Refuse NaN/Inf, and values beyond `max_abs` when set, in one pass of 256 KiB slices.

    Without a bound, `x - x` is 0 for finite x and NaN for NaN or ±Inf; with one,
    `|x|`'s maximum is NaN, Inf or too large exactly when the slice is refused.
    Either is written into one scratch buffer, so the check allocates nothing per
    slice (the file is never mapped).
    """
    buf = page_buffer(_CHECK_CHUNK_BYTES)
    scratch = torch.frombuffer(page_buffer(_CHECK_CHUNK_BYTES), dtype=torch.uint8)
    for name in names:
        if not torch_dtype(blob.entry(name).dtype).is_floating_point:
            continue
        try:
            for values in blob.slices(name, buf):
                diff = scratch.view(values.dtype)[: values.numel()]
                if max_abs is None:
                    bad = bool(torch.sub(values, values, out=diff).any())
                else:
                    bad = (
                        values.numel() > 0
                        and not float(torch.abs(values, out=diff).max()) <= max_abs
                    )
                if bad:
                    _refuse(name, values, max_abs)
        except BlobError as exc:
            raise _malformed(str(exc)) from None


def _refuse(name: str, values: torch.Tensor, max_abs: float | None) -> None:
    if bool(torch.isnan(values).any()):
        raise _invalid(f"tensor {name!r} contains NaN values")
    if bool(torch.isinf(values).any()):
        raise _invalid(f"tensor {name!r} contains Inf values")
    biggest = float(values.abs().max())
    raise _invalid(
        f"tensor {name!r} holds a value of magnitude {biggest:.3g}; this federation's "
        f"aggregation.max_abs_value is {max_abs:g}"
    )


def not_safetensors(exc: BlobError, received: int | None = None) -> Malformed:
    """The refusal of a body the codec cannot read; `received`: its size, once all arrived."""
    size = f" ({received} bytes received)" if received is not None else ""
    return _malformed(f"update is not a valid safetensors file{size}: {exc}")


@dataclass(frozen=True)
class DeltaTarget:
    """What a delta is checked against: its federation and round, and the server's bound."""

    spec: FederationSpec
    manifest: Mapping[str, TensorInfo]
    federation_id: str
    round: int
    max_num_examples: int


def check_header(header: SafetensorsHeader, target: DeltaTarget) -> DeltaMetadata:
    """Everything about a delta its header alone tells: metadata, keys, shapes and dtypes.

    Runs as soon as an upload's header has arrived (so a wrong one is refused before the
    body is read) and again on the whole file. Returns the metadata or raises `Invalid`.
    """
    try:
        meta = DeltaMetadata.from_safetensors(header.metadata)
    except BlobError as exc:
        raise _invalid(f"bad update metadata: {exc}") from None
    if meta.num_examples > target.max_num_examples:
        raise _invalid(
            f"metadata 'num_examples' is {meta.num_examples}; the server accepts at most "
            f"{target.max_num_examples}",
        )
    fid, number = target.federation_id, target.round
    if meta.federation != fid:
        raise _invalid(f"metadata 'federation' is {meta.federation!r} but the URL names {fid!r}")
    if meta.round != number:
        raise _invalid(f"metadata 'round' is {meta.round} but the URL names round {number}")
    _check_tensors(header, target.manifest, target.spec.transport.dtype)
    return meta


def validate_delta(path: Path, target: DeltaTarget) -> DeltaMetadata:
    """Return the delta's metadata, or raise `Malformed` (unreadable) or `Invalid`."""
    try:
        blob = Blob.open(path)
    except BlobError as exc:
        raise not_safetensors(exc, path.stat().st_size) from None
    meta = check_header(blob.header, target)
    _check_finite(blob, sorted(target.manifest), target.spec.aggregation.max_abs_value)
    return meta
