"""The round state machine over real HTTP: quorum, deadline, completion."""

from __future__ import annotations

from collections.abc import Callable

import torch

Fill = Callable[[str, torch.Size], torch.Tensor]


def _random_fill(seed: int) -> Fill:
    def fill(name: str, shape: torch.Size) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed * 1000 + sum(map(ord, name)))
        return torch.randn(shape, generator=g) * 0.01

    return fill


def test_quorum_of_three_gives_old_plus_example_weighted_mean(federation, delta):
    fed = federation(clients=3, quorum=3, min_updates=2, total=2)
    base = fed.info.global_version
    old = fed.state()
    examples = {cid: n for cid, n in zip(sorted(fed.keys), (10, 30, 60), strict=True)}
    fills = {cid: _random_fill(i) for i, cid in enumerate(sorted(fed.keys))}

    for cid in reversed(sorted(fed.keys)):  # arrival order must not matter
        r = fed.upload(cid, 1, delta(fed.info, 1, base, examples[cid], fills[cid]))
        assert r.status_code == 201, r.text
    status = fed.wait_round(2)

    new = fed.state()
    total = sum(examples.values())
    for name, t in old.items():
        mean = sum(fills[cid](name, t.shape) * (examples[cid] / total) for cid in sorted(fed.keys))
        torch.testing.assert_close(new[name], t + mean, rtol=1e-6, atol=1e-7)
    assert status["round"] == 2 and status["status"] == "open"
    assert status["global_version"] != base and status["received"] == 0
    (r1, r2) = fed.app.client().get(f"/v1/federations/{fed.id}/rounds").json()
    assert (r1["status"], r1["closed_by"], r1["result_version"]) == (
        "closed",
        "quorum",
        status["global_version"],
    )
    assert sorted(p["client_id"] for p in r1["participants"]) == sorted(fed.keys)
    assert r2["status"] == "open" and r2["base_version"] == status["global_version"]
