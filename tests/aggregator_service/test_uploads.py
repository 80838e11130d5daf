"""The catalogue of bad uploads: each is refused with a clear error and changes nothing."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from sqlalchemy import func, select

from aggregator_service.storage.tables import rounds, updates
from shared.api import FederationInfo
from shared.blobs import DeltaMetadata, encode_state
from tests.aggregator_service.db_faults import failing_commits
from tests.deltas import make_delta

MAX_UPLOAD_MB = 1.5


@dataclass
class Scene:
    """Round 1 closed by c0..c2; round 2 open holding c0's update; c3 probes."""

    fed: Any
    v0: str
    v1: str
    c: list[str]
    round1_c0: bytes
    round2_c0: bytes
    make: Callable[..., bytes]

    @property
    def info(self) -> FederationInfo:
        info: FederationInfo = self.fed.info
        return info

    def good(self, **kw: Any) -> bytes:
        return self.make(self.info, kw.pop("rnd", 2), kw.pop("base", self.v1), **kw)

    def tensors(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        return {n: torch.zeros(t.shape, dtype=dtype) for n, t in self.info.manifest.items()}

    def meta(self, **changes: Any) -> dict[str, str]:
        meta = DeltaMetadata(
            federation=self.info.id, round=2, base_version=self.v1, num_examples=5
        ).to_safetensors()
        for k, v in changes.items():
            if v is None:
                meta.pop(k)
            else:
                meta[k] = str(v)
        return meta


def stage_scene(app: Any, new_federation: Any, spec_with: Any) -> Scene:
    """Play the Scene on `app`: four clients, round 1 closed by c0..c2, c0's update in round 2."""
    fed = new_federation(app, spec_with(total=3, quorum=3, min_updates=2), 4)
    c = sorted(fed.keys)
    v0 = fed.info.global_version
    round1 = {cid: make_delta(fed.info, 1, v0, 10 + i) for i, cid in enumerate(c[:3])}
    for cid, body in round1.items():
        assert fed.upload(cid, 1, body).status_code == 201
    v1 = fed.wait_round(2)["global_version"]
    round2_c0 = make_delta(fed.info, 2, v1, 7, fill=0.5)
    assert fed.upload(c[0], 2, round2_c0).status_code == 201
    return Scene(fed, v0, v1, c, round1[c[0]], round2_c0, make_delta)


@pytest.fixture(scope="module")
def scene(start_module_app, new_federation, spec_with) -> Scene:
    return stage_scene(start_module_app(max_upload_mb=MAX_UPLOAD_MB), new_federation, spec_with)


def _raw(entries: dict[str, tuple[str, list[int], tuple[int, int]]], data: bytes) -> bytes:
    header = {
        n: {"dtype": d, "shape": s, "data_offsets": list(o)} for n, (d, s, o) in entries.items()
    }
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def _with(scene: Scene, change: Callable[[dict[str, torch.Tensor]], None]) -> bytes:
    tensors = scene.tensors()
    change(tensors)
    return encode_state(tensors, scene.meta())


def _first(scene: Scene) -> str:
    return sorted(scene.info.manifest)[0]


def _set(name_of: Callable[[dict[str, torch.Tensor]], str], value: float):
    def change(t: dict[str, torch.Tensor]) -> None:
        t[name_of(t)].view(-1)[0] = value

    return change


def _huge_header() -> bytes:
    blob = json.dumps({"__metadata__": {"pad": "x" * (1 << 20)}}).encode()
    return struct.pack("<Q", len(blob)) + blob


# name -> (client index, url round, body factory, status, error code, detail fragment)
CASES: dict[str, tuple[int, int, Callable[[Scene], bytes], int, str, str]] = {
    "not_safetensors": (
        3,
        2,
        lambda s: b"plain text, not tensors",
        400,
        "invalid_update",
        "not a valid safetensors",
    ),
    "pickle": (
        3,
        2,
        lambda s: pickle.dumps({"w": [0.0] * 64}),
        400,
        "invalid_update",
        "not a valid safetensors",
    ),
    "truncated": (3, 2, lambda s: s.good()[:-16], 400, "invalid_update", "out of range"),
    "header_length_beyond_body": (
        3,
        2,
        lambda s: struct.pack("<Q", 4096) + b'{"a": 1}',
        400,
        "invalid_update",
        "runs past the end",
    ),
    "header_over_1mib": (
        3,
        2,
        lambda s: _huge_header(),
        400,
        "invalid_update",
        "the limit is 1048576",
    ),
    "overlapping_offsets": (
        3,
        2,
        lambda s: _raw({"a": ("F32", [64], (0, 256)), "b": ("F32", [64], (128, 384))}, bytes(384)),
        400,
        "invalid_update",
        "overlaps",
    ),
    "out_of_range_offsets": (
        3,
        2,
        lambda s: _raw({"a": ("F32", [64], (0, 256))}, bytes(128)),
        400,
        "invalid_update",
        "out of range",
    ),
    "missing_tensor": (
        3,
        2,
        lambda s: _with(s, lambda t: t.pop(_first(s))),
        422,
        "invalid_update",
        "missing tensors: ",
    ),
    "extra_tensor": (
        3,
        2,
        lambda s: _with(s, lambda t: t.update({"evil.extra": torch.zeros(3)})),
        422,
        "invalid_update",
        "unexpected tensors: evil.extra",
    ),
    "wrong_shape": (
        3,
        2,
        lambda s: _with(s, lambda t: t.update({_first(s): torch.zeros(t[_first(s)].numel() + 1)})),
        422,
        "invalid_update",
        "has shape",
    ),
    "wrong_dtype": (
        3,
        2,
        lambda s: encode_state(s.tensors(torch.float16), s.meta()),
        422,
        "invalid_update",
        "transport.dtype is float32",
    ),
    "nan": (
        3,
        2,
        lambda s: _with(s, _set(lambda t: sorted(t)[-1], float("nan"))),
        422,
        "invalid_update",
        "contains NaN",
    ),
    "inf": (
        3,
        2,
        lambda s: _with(s, _set(lambda t: sorted(t)[0], float("-inf"))),
        422,
        "invalid_update",
        "contains Inf",
    ),
    "num_examples_missing": (
        3,
        2,
        lambda s: encode_state(s.tensors(), s.meta(num_examples=None)),
        422,
        "invalid_update",
        "'num_examples' is missing",
    ),
    "num_examples_zero": (
        3,
        2,
        lambda s: encode_state(s.tensors(), s.meta(num_examples=0)),
        422,
        "invalid_update",
        "num_examples",
    ),
    "num_examples_negative": (
        3,
        2,
        lambda s: encode_state(s.tensors(), s.meta(num_examples=-5)),
        422,
        "invalid_update",
        "num_examples",
    ),
    "num_examples_absurd": (
        3,
        2,
        lambda s: encode_state(s.tensors(), s.meta(num_examples=10**12)),
        422,
        "invalid_update",
        "at most 100000000",
    ),
    "metadata_round_mismatch": (
        3,
        2,
        lambda s: encode_state(s.tensors(), s.meta(round=3)),
        422,
        "invalid_update",
        "metadata 'round' is 3",
    ),
    "federation_mismatch": (
        3,
        2,
        lambda s: encode_state(s.tensors(), s.meta(federation="fed_other")),
        422,
        "invalid_update",
        "'fed_other'",
    ),
    "stale_base_version": (
        3,
        2,
        lambda s: s.good(base=s.v0),
        409,
        "stale_base_version",
        "after round 0",
    ),
    "unknown_base_version": (
        3,
        2,
        lambda s: s.good(base="ab" * 32),
        409,
        "stale_base_version",
        "not a global version",
    ),
    "closed_round": (
        3,
        1,
        lambda s: s.good(rnd=1, base=s.v0),
        409,
        "round_closed",
        "round 1 is closed",
    ),
    "future_round": (3, 3, lambda s: s.good(rnd=3), 409, "round_closed", "has not opened yet"),
    "body_over_max": (
        3,
        2,
        lambda s: bytes(int(MAX_UPLOAD_MB * 2**20) + 1),
        413,
        "payload_too_large",
        "exceeds",
    ),
    "different_bytes_same_round": (
        0,
        2,
        lambda s: s.good(num_examples=8),
        409,
        "conflict",
        "different update",
    ),
}
# name -> (client index, round, body) answered 200 duplicate=true
DUPLICATES: dict[str, tuple[int, int, Callable[[Scene], bytes]]] = {
    "same_bytes_open_round": (0, 2, lambda s: s.round2_c0),
    "same_bytes_after_close": (0, 1, lambda s: s.round1_c0),
}


def _snapshot(scene: Scene) -> tuple[Any, ...]:
    core = scene.fed.app.core
    with core.db.read() as conn:
        n_updates = conn.execute(select(func.count()).select_from(updates)).scalar_one()
        round_rows = conn.execute(
            select(rounds.c.number, rounds.c.status, rounds.c.received, rounds.c.revision)
            .where(rounds.c.federation_id == scene.info.id)
            .order_by(rounds.c.number)
        ).all()
    blobs = sorted(str(p.relative_to(core.blobs.root)) for p in core.blobs.root.rglob("*"))
    return n_updates, [tuple(r) for r in round_rows], blobs


@pytest.fixture
def unchanged(scene: Scene) -> Iterator[None]:
    before = _snapshot(scene)
    status_before = scene.fed.status()
    yield
    assert _snapshot(scene) == before
    status_after = scene.fed.status()
    assert (status_after["received"], status_after["revision"]) == (
        status_before["received"],
        status_before["revision"],
    )


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_upload_is_refused_and_changes_nothing(scene: Scene, unchanged: None, case: str):
    who, rnd, body, status, code, fragment = CASES[case]

    r = scene.fed.upload(scene.c[who], rnd, body(scene))

    assert r.status_code == status, r.text
    err = r.json()
    assert err["error"] == code
    assert fragment in err["detail"]
    if status == 409:
        assert err["round"]["round"] == 2 and err["round"]["global_version"] == scene.v1


@pytest.mark.parametrize("case", DUPLICATES, ids=list(DUPLICATES))
def test_same_bytes_again_is_a_duplicate_not_a_change(scene: Scene, unchanged: None, case: str):
    who, rnd, body = DUPLICATES[case]

    r = scene.fed.upload(scene.c[who], rnd, body(scene))

    assert r.status_code == 200, r.text
    assert r.json()["duplicate"] is True and r.json()["round"] == rnd


def test_body_past_its_header_without_content_length_is_refused(scene: Scene, unchanged: None):
    def chunks() -> Iterator[bytes]:
        yield scene.good()
        for _ in range(32):
            yield bytes(64 * 1024)

    with scene.fed.as_client(scene.c[3]) as client:
        r = client.put(f"/v1/federations/{scene.info.id}/rounds/2/update", content=chunks())

    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    assert "longer than the" in r.json()["detail"]


def test_a_retry_restores_the_blob_of_an_accepted_update_found_missing(
    scene: Scene, unchanged: None
):
    """As after a COMMIT that raised though it was applied: the row is there, its blob not."""
    blob = scene.fed.app.core.blobs.path(hashlib.sha256(scene.round2_c0).hexdigest())
    blob.unlink()

    r = scene.fed.upload(scene.c[0], 2, scene.round2_c0)

    assert r.status_code == 200 and r.json()["duplicate"] is True
    assert blob.read_bytes() == scene.round2_c0


def test_an_upload_whose_commit_fails_leaves_its_blob_for_a_row_that_may_exist(scene: Scene):
    body = scene.good(num_examples=3)
    blob = scene.fed.app.core.blobs.path(hashlib.sha256(body).hexdigest())

    with failing_commits(scene.fed.app.core.db, "updates"):
        r = scene.fed.upload(scene.c[3], 2, body)

    assert r.status_code >= 500
    assert blob.read_bytes() == body
    assert scene.fed.status()["received"] == 1


def test_refusals_are_counted_by_reason(scene: Scene):
    text = scene.fed.app.client().get("/metrics").text
    assert 'fedtune_updates_refused_total{reason="invalid_update"}' in text
