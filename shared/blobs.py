"""Tensor payloads on the wire and on disk: safetensors files, never pickles.

The one codec both sides use. Both read safetensors that came over the
network, so the header is checked here, byte by byte, before any tensor is
touched: its length, its JSON, the dtypes, and that the data offsets tile the
body exactly (`parse_header`). A `Blob` hands out the tensors of a checked
file as zero-copy views over a memory map or a buffer; writers lay out the
same bytes for the same inputs and replace files atomically. No other module
parses a safetensors header, and `torch.load` is never called on anything
FedTune receives.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import mmap
import os
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.validation import format_validation_error

__all__ = [
    "DELTA_FORMAT",
    "MAX_HEADER_BYTES",
    "MAX_METRIC_ABS",
    "Blob",
    "BlobError",
    "DeltaMetadata",
    "SafetensorsHeader",
    "TensorEntry",
    "atomic_save_state",
    "atomic_write",
    "atomic_write_bytes",
    "dtype_name",
    "encode_state",
    "fsync_dir",
    "header_length",
    "page_buffer",
    "parse_header",
    "read_header",
    "read_state",
    "sha256_file",
    "tensor_bytes",
    "torch_dtype",
    "write_state",
]

DELTA_FORMAT = "fedtune-delta/1"
MAX_HEADER_BYTES = 1 << 20
# The largest magnitude a reported metric may have: far beyond any loss, accuracy or rate,
# and small enough that example-weighted sums of them can never overflow to Inf.
MAX_METRIC_ABS = 1e15

# safetensors dtype codes -> (torch dtype name, item size)
_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}


class BlobError(ValueError):
    """A payload that is not a well-formed FedTune safetensors file."""


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.float32` -> `"float32"`."""
    return str(dtype).removeprefix("torch.")


def torch_dtype(name: str) -> torch.dtype:
    """`"float32"` -> `torch.float32`."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise BlobError(f"unknown dtype {name!r}")
    return dtype


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # torch dtype name, e.g. "float32"
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    header_size: int  # bytes of JSON after the 8-byte length prefix
    data_size: int

    @property
    def total_size(self) -> int:
        return 8 + self.header_size + self.data_size


def header_length(prefix: bytes, max_header: int = MAX_HEADER_BYTES) -> int:
    """The JSON header's length, read from a body's first 8 bytes; `BlobError` past `max_header`."""
    if len(prefix) < 8:
        raise BlobError("body is not a safetensors file: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > max_header:
        raise BlobError(f"safetensors header is {n} bytes; the limit is {max_header}")
    return int(n)


def parse_header(
    prefix: bytes, total_size: int | None = None, max_header: int = MAX_HEADER_BYTES
) -> SafetensorsHeader:
    """Check a safetensors header given the file's first bytes and its total size.

    `prefix` must hold at least the 8-byte length and the JSON header. Without
    `total_size` (a body still arriving) the tensors must tile the data from 0
    without gaps, and the header's `total_size` is the size it declares. Raises
    `BlobError` with a message a user can act on.
    """
    if total_size is not None and total_size < 8:
        raise BlobError("body is not a safetensors file: shorter than the 8-byte header length")
    n = header_length(prefix, max_header)
    if total_size is not None and 8 + n > total_size:
        raise BlobError(
            f"safetensors header length {n} runs past the end of the {total_size}-byte body "
            "(truncated upload or not a safetensors file)"
        )
    if len(prefix) < 8 + n:
        raise BlobError("internal: header prefix too short")
    raw = _load_json(prefix[8 : 8 + n], "safetensors header", " (not a safetensors file?)")
    if not isinstance(raw, dict):
        raise BlobError("safetensors header must be a JSON object")
    meta_raw = raw.pop("__metadata__", {}) or {}
    if not isinstance(meta_raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta_raw.items()
    ):
        raise BlobError("safetensors __metadata__ must map strings to strings")
    data_size = None if total_size is None else total_size - 8 - n
    tensors: dict[str, TensorEntry] = {}
    for name, info in raw.items():
        tensors[name] = _parse_entry(name, info, data_size)
    spans = sorted((t.start, t.end, t.name) for t in tensors.values())
    cursor = 0
    for start, end, name in spans:
        if start != cursor:
            kind = "overlaps another tensor" if start < cursor else "leaves a gap before it"
            raise BlobError(f"tensor {name!r}: data offsets [{start}, {end}) {kind}")
        cursor = end
    if data_size is None:
        data_size = cursor
    elif cursor != data_size:
        raise BlobError(
            f"tensor data covers {cursor} bytes but the body holds {data_size} "
            "(truncated or padded upload)"
        )
    return SafetensorsHeader(tensors, dict(meta_raw), n, data_size)


def _load_json(raw: bytes, what: str, hint: str = "") -> Any:
    """`json.loads` of UTF-8, with every way hostile text can fail it (bad UTF-8 or syntax,
    nesting deep enough to exhaust the parser's recursion, integers of thousands of digits)
    as a `BlobError`."""
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise BlobError(f"{what} is nested too deeply") from None
    except (UnicodeDecodeError, ValueError):
        raise BlobError(f"{what} is not valid JSON{hint}") from None


def _parse_entry(name: str, info: Any, data_size: int | None) -> TensorEntry:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise BlobError(f"tensor {name!r}: header entry needs exactly dtype, shape, data_offsets")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(code, str) or code not in _DTYPES:
        raise BlobError(f"tensor {name!r}: unsupported dtype {code!r}")
    # `type(...) is int`: JSON true/false load as bools, which `isinstance(..., int)` accepts
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise BlobError(f"tensor {name!r}: shape must be a list of non-negative integers")
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
    ):
        raise BlobError(f"tensor {name!r}: data_offsets must be two integers [start, end]")
    start, end = offsets
    if not 0 <= start <= end or (data_size is not None and end > data_size):
        raise BlobError(f"tensor {name!r}: data offsets [{start}, {end}) out of range")
    dtype, itemsize = _DTYPES[code]
    if (end - start) != math.prod(shape) * itemsize:
        raise BlobError(
            f"tensor {name!r}: {end - start} bytes do not match shape {shape} of {dtype}"
        )
    return TensorEntry(name, dtype, tuple(shape), start, end)


def read_header(path: str | Path, max_header: int = MAX_HEADER_BYTES) -> SafetensorsHeader:
    """Read and check the header of a safetensors file on disk (nothing else is read)."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        body = f.read(n) if n <= max_header else b""
    return parse_header(head + body, size, max_header)


class Blob:
    """A safetensors payload whose header has been checked, with its tensors as views.

    The one reader of the format: `Blob.open(path)` reads and checks the
    header only; `tensor(name)` is a zero-copy view of the data (the file is
    memory-mapped on first use, privately: writing into a view never reaches
    the file, but would turn shared page cache into private memory, so treat
    views as read-only); `slices(name, buf)` reads a tensor through a
    caller's buffer with plain file reads, never mapping the file; `load()`
    copies every tensor into memory of its own.
    """

    def __init__(
        self,
        header: SafetensorsHeader,
        *,
        path: Path | None = None,
        buffer: bytearray | memoryview | mmap.mmap | None = None,
    ) -> None:
        if sys.byteorder != "little":  # pragma: no cover - safetensors data is little-endian
            raise RuntimeError("tensors are read in place: FedTune needs a little-endian host")
        self.header = header
        self.path = path
        self._buffer = buffer
        self._base = 8 + header.header_size

    @classmethod
    def open(cls, path: str | Path, max_header: int = MAX_HEADER_BYTES) -> Blob:
        """Check the header of the file at `path`; tensors are read when asked for."""
        return cls(read_header(path, max_header), path=Path(path))

    @classmethod
    def from_buffer(cls, data: bytes | bytearray | memoryview) -> Blob:
        """Check a payload held in memory; tensors are views of it (bytes are copied once)."""
        buffer = bytearray(data) if isinstance(data, bytes) else data
        return cls(parse_header(bytes(buffer[: 8 + MAX_HEADER_BYTES]), len(buffer)), buffer=buffer)

    @property
    def tensors(self) -> dict[str, TensorEntry]:
        return self.header.tensors

    @property
    def metadata(self) -> dict[str, str]:
        return self.header.metadata

    def names(self) -> list[str]:
        return sorted(self.header.tensors)

    def entry(self, name: str) -> TensorEntry:
        try:
            return self.header.tensors[name]
        except KeyError:
            raise KeyError(name) from None

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor `name` as stored: a view of the mapping or buffer, copied only if misaligned."""
        entry = self.entry(name)
        dtype = torch_dtype(entry.dtype)
        count = math.prod(entry.shape)
        if count == 0:
            return torch.empty(entry.shape, dtype=dtype)
        if self._buffer is None:
            assert self.path is not None
            with open(self.path, "rb") as f:
                self._buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        offset = self._base + entry.start
        if offset % dtype.itemsize:  # a writer without safetensors' header padding
            raw = bytearray(self._buffer[offset : offset + entry.end - entry.start])
            return torch.frombuffer(raw, dtype=dtype).view(entry.shape)
        view = torch.frombuffer(self._buffer, dtype=dtype, count=count, offset=offset)
        return view.view(entry.shape)

    def slices(self, name: str, buf: bytearray | memoryview | mmap.mmap) -> Iterator[torch.Tensor]:
        """Tensor `name` flattened, in consecutive slices read into `buf` (reused each time).

        Plain file reads: the file is never mapped, so reading a large upload costs
        `len(buf)` bytes of memory. Each slice is valid until the next is read.
        """
        entry = self.entry(name)
        dtype = torch_dtype(entry.dtype)
        step = len(buf) - len(buf) % dtype.itemsize
        if self.path is None:
            assert self._buffer is not None
            data = memoryview(self._buffer)[self._base + entry.start : self._base + entry.end]
            for start in range(0, len(data), step):
                n = min(step, len(data) - start)
                memoryview(buf)[:n] = data[start : start + n]
                yield torch.frombuffer(buf, dtype=dtype, count=n // dtype.itemsize)
            return
        with self.path.open("rb", buffering=0) as f:
            f.seek(self._base + entry.start)
            left = entry.end - entry.start
            while left > 0:
                n = f.readinto(memoryview(buf)[: min(step, left)])
                if not n:
                    raise BlobError(f"tensor {name!r}: file ended early")
                yield torch.frombuffer(buf, dtype=dtype, count=n // dtype.itemsize)
                left -= n

    def load(self) -> dict[str, torch.Tensor]:
        """Every tensor, copied into memory of its own (the mapping is released)."""
        try:
            return {name: self.tensor(name).clone() for name in self.names()}
        finally:
            self.close()

    def close(self) -> None:
        """Drop this blob's reference to its mapping (views keep it alive until freed)."""
        if self.path is not None:
            self._buffer = None


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Check a safetensors file and load its tensors (the only way FedTune loads one)."""
    return Blob.open(path).load()


def page_buffer(nbytes: int) -> mmap.mmap:
    """A zeroed, writable buffer of `nbytes` that lives outside the malloc heaps.

    Request-sized buffers (an upload's spool, a validator's slices) taken from
    malloc sit between the short-lived allocations of concurrent requests and
    keep the freed space around them from being reused or returned, so a
    server grows with the data that passes through it. An anonymous private
    mapping is its own region, unmapped whole once the last reference goes.
    """
    return mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


class DeltaMetadata(BaseModel):
    """`__metadata__` of an update blob (all values travel as strings)."""

    model_config = ConfigDict(extra="forbid")

    format: str = Field(default=DELTA_FORMAT, description="Always fedtune-delta/1.")
    federation: str = Field(description="Federation id the delta belongs to.")
    round: int = Field(ge=1, description="Round the delta was trained for.")
    base_version: str = Field(description="sha256 of the global state it started from.")
    num_examples: int = Field(ge=1, description="Local examples trained on (aggregation weight).")
    metrics: dict[str, float] = Field(
        default_factory=dict,
        description="train_loss, train_accuracy, val_accuracy, examples_per_s, ...",
    )

    def to_safetensors(self) -> dict[str, str]:
        return {
            "format": self.format,
            "federation": self.federation,
            "round": str(self.round),
            "base_version": self.base_version,
            "num_examples": str(self.num_examples),
            "metrics": json.dumps(self.metrics, sort_keys=True),
        }

    @classmethod
    def from_safetensors(cls, meta: Mapping[str, str]) -> DeltaMetadata:
        """Parse `__metadata__`; raises `BlobError` naming the missing or bad key."""
        if meta.get("format") != DELTA_FORMAT:
            raise BlobError(
                f"metadata 'format' must be {DELTA_FORMAT!r}, got {meta.get('format')!r}"
            )
        data: dict[str, Any] = dict(meta)
        for key in ("round", "num_examples"):
            if key not in data:
                raise BlobError(f"metadata '{key}' is missing")
            try:
                data[key] = int(data[key])
            except ValueError:
                raise BlobError(f"metadata '{key}' must be an integer, got {data[key]!r}") from None
        data["metrics"] = _metrics(data.get("metrics", "{}"))
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise BlobError(f"metadata {format_validation_error(exc)}") from None


def _metrics(text: str) -> dict[str, float]:
    """`metadata['metrics']`: a flat JSON object of finite numbers, each within
    `MAX_METRIC_ABS` (so the server's example-weighted means stay finite too)."""
    raw = _load_json(text.encode("utf-8", "surrogatepass"), "metadata 'metrics'")
    if not isinstance(raw, dict):
        raise BlobError("metadata 'metrics' must be a JSON object of numbers")
    metrics: dict[str, float] = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BlobError(f"metadata 'metrics': {key!r} must be a number, got {value!r:.40}")
        if not abs(value) <= MAX_METRIC_ABS:  # NaN fails every comparison
            raise BlobError(
                f"metadata 'metrics': {key!r} is {value!r:.40}; metrics must be finite numbers "
                f"of magnitude at most {MAX_METRIC_ABS:g}"
            )
        metrics[key] = float(value)
    return metrics


_CODES = {name: code for code, (name, _) in _DTYPES.items()}


def _layout(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None
) -> tuple[bytes, list[torch.Tensor]]:
    """The safetensors header and the tensors in file order, both fixed by the inputs alone.

    safetensors' own writer emits `__metadata__` keys in no fixed order, so the
    same delta would give different bytes (and a different sha256) each time.
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {k: str(metadata[k]) for k in sorted(metadata)}
    ordered: list[torch.Tensor] = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        code = _CODES.get(dtype_name(t.dtype))
        if code is None:
            raise BlobError(f"tensor {name!r}: dtype {dtype_name(t.dtype)} cannot be stored")
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": code,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        ordered.append(t)
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, ordered


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, viewed in place (no copy)."""
    return t.reshape(-1).view(torch.uint8).numpy().data


def encode_state(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Serialise tensors to safetensors bytes; the same inputs always give the same bytes."""
    head, ordered = _layout(tensors, metadata)
    return head + b"".join(tensor_bytes(t) for t in ordered)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write-temp, fsync, rename: `path` holds either nothing or all of `data`."""
    atomic_write(path, lambda f: f.write(data))


def write_state(
    f: BinaryIO, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write a safetensors file to an open binary file, tensor by tensor (no whole copy)."""
    head, ordered = _layout(tensors, metadata)
    f.write(head)
    for t in ordered:
        f.write(tensor_bytes(t))


def atomic_save_state(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """`write_state` through a temp file, fsynced and renamed into place."""
    atomic_write(path, lambda f: write_state(f, tensors, metadata))


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write` on a temp file beside `path`, fsync it, rename it over `path`, fsync the
    directory: after a crash `path` holds the old content or the new, never a mix. The file
    is created with mode 0600 and keeps it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable.

    A no-op where directories cannot be opened or their filesystem cannot sync
    them (EINVAL, ENOTSUP); any other failure (EIO) is raised.
    """
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
