"""The attack harness: each transform as documented, and a federation with an attacker."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from client_sdk.workdir import WorkDir
from lab.attacks import Attack, run_poisoned
from lab.attacks.participant import poison_file
from lab.attacks.transforms import l2_norm
from lab.datasets import (
    DIGIT_CLASSES,
    DIGIT_PROMPT,
    load_digits,
    split_held_out,
    write_image_folders,
)
from lab.local_federation import ServerProcess, start_server
from shared.blobs import Blob, DeltaMetadata, atomic_save_state, read_state, sha256_file
from shared.spec import FederationSpec, RoundsSpec, TaskSpec, load_spec
from tests.e2e.test_federation_e2e import EXAMPLES


def _delta(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "visual.bias": torch.randn(7, generator=gen).to(dtype),
        "head.weight": torch.randn(3, 4, generator=gen).to(dtype),
        "empty": torch.zeros(0, dtype=dtype),
    }


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("name", "factor", "k"),
    [("sign_flip", 10, -10), ("sign_flip", 1, -1), ("scale", 10, 10), ("scale", 2.5, 2.5)],
)
def test_sign_flip_and_scale_multiply_every_tensor(name, factor, k):
    delta = _delta()

    poisoned = Attack(name, factor).apply(delta, _gen())

    assert set(poisoned) == set(delta)
    for n, t in delta.items():
        assert torch.equal(poisoned[n], t * k)


def test_gaussian_noise_has_the_honest_norm_shapes_and_dtypes_and_is_not_the_delta():
    delta = _delta(torch.float16)

    poisoned = Attack("gaussian").apply(delta, _gen())

    assert {n: (t.shape, t.dtype) for n, t in poisoned.items()} == {
        n: (t.shape, t.dtype) for n, t in delta.items()
    }
    assert l2_norm(poisoned) == pytest.approx(l2_norm(delta), rel=1e-3)
    flat_p = torch.cat([poisoned[n].float().ravel() for n in sorted(delta)])
    flat_d = torch.cat([delta[n].float().ravel() for n in sorted(delta)])
    cosine = float(flat_p @ flat_d) / (l2_norm(poisoned) * l2_norm(delta))
    assert abs(cosine) < 0.9


def test_gaussian_noise_repeats_for_a_seed_and_differs_between_seeds():
    delta = _delta()
    attack = Attack("gaussian")

    first, again, other = (attack.apply(delta, _gen(s)) for s in (1, 1, 2))

    assert all(torch.equal(first[n], again[n]) for n in delta)
    assert not torch.equal(first["head.weight"], other["head.weight"])


def test_attacks_leave_the_honest_delta_untouched():
    delta = _delta()
    before = {n: t.clone() for n, t in delta.items()}

    for name in ("sign_flip", "scale", "gaussian"):
        Attack(name).apply(delta, _gen())

    assert all(torch.equal(delta[n], before[n]) for n in delta)


@pytest.mark.parametrize(
    ("name", "factor", "message"),
    [
        ("label_flip", 10.0, "attack: unknown 'label_flip'; known: sign_flip, scale, gaussian"),
        ("scale", 0.0, "attack: factor must be a positive number, not 0.0"),
        ("scale", -10.0, "attack: factor must be a positive number, not -10.0"),
        ("sign_flip", math.inf, "attack: factor must be a positive number, not inf"),
    ],
)
def test_a_bad_attack_is_refused_in_one_line(name, factor, message):
    with pytest.raises(ValueError) as err:
        Attack(name, factor)

    assert str(err.value) == message


def test_poisoning_a_delta_file_keeps_its_metadata_and_returns_its_digest(tmp_path):
    path = tmp_path / "round-1.delta.safetensors"
    meta = DeltaMetadata(
        federation="fed_x",
        round=1,
        base_version="a" * 64,
        num_examples=12,
        metrics={"train_loss": 1.5},
    )
    atomic_save_state(path, _delta(), meta.to_safetensors())

    digest = poison_file(path, Attack("sign_flip"), _gen())

    assert digest == sha256_file(path)
    assert Blob.open(path).metadata == meta.to_safetensors()
    assert all(torch.equal(t, _delta()[n] * -10) for n, t in read_state(path).items())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path / "server")
    yield proc
    proc.stop()


def _tiny_spec() -> FederationSpec:
    spec = load_spec(EXAMPLES / "tiny-clip-bias.yaml")
    lt = spec.local_training.model_copy(update={"epochs": 1, "batch_size": 8, "max_steps": 2})
    rounds = RoundsSpec(total=1, quorum=3, min_updates=3, deadline_s=600)
    task = TaskSpec(classes=DIGIT_CLASSES, prompt_template=DIGIT_PROMPT)
    return spec.model_copy(update={"rounds": rounds, "local_training": lt, "task": task})


@pytest.mark.e2e
@pytest.mark.slow
def test_a_federation_with_an_attacker_completes_and_the_server_holds_its_poison(server, tmp_path):
    data = load_digits()
    train, test = split_held_out(data.labels, 0.5, np.random.default_rng(0))
    shares: dict[str, Sequence[int]] = {
        f"org-{k + 1}": train[k * 24 : (k + 1) * 24] for k in range(3)
    }
    folders = write_image_folders(tmp_path / "data", data, shares)
    work = tmp_path / "work"

    run = run_poisoned(
        server,
        _tiny_spec(),
        list(folders.values()),
        data.subset(test[:40]),
        work,
        attackers={2: Attack("scale", 10.0)},
    )

    assert len(run.accuracy) == 2 and all(0.0 <= a <= 1.0 for a in run.accuracy)
    assert [r.participant_count for r in run.history] == [3]
    orgs = _work_dirs(server, run.federation_id, work)
    entry = orgs["org-3"].entry(1)
    assert entry is not None and entry.status == "uploaded"
    assert entry.sha256 == sha256_file(orgs["org-3"].delta_path(1))
    assert _stored_blob(server, entry.sha256).exists()
    # AdamW's first steps move every parameter by about lr, so honest norms are alike.
    assert run.attackers == ["org-3"]
    norms = {name: l2_norm(read_state(wd.delta_path(1))) for name, wd in orgs.items()}
    assert norms == {name: pytest.approx(sent[0]) for name, sent in run.sent_norms.items()}
    assert norms["org-3"] > 5 * max(norms["org-1"], norms["org-2"])


def _work_dirs(server: ServerProcess, fid: str, work: Path) -> dict[str, WorkDir]:
    with server.admin() as admin:
        clients = admin.list_clients(fid)
    return {c.name: WorkDir(work / c.name, fid, c.client_id) for c in clients}


def _stored_blob(server: ServerProcess, digest: str) -> Path:
    return server.data_dir / "blobs" / "sha256" / digest[:2] / digest[2:]
