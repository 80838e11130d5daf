"""Every strategy over in-memory `Deltas`, two rounds, against the formula written in numpy.

Random deltas from five clients with different example counts, some above the
clip bound; the reference is computed in float64 straight from the papers'
update rules, the strategy in float32 through `MemoryDeltas`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aggregator_service.aggregation import STRATEGIES, MemoryDeltas, get_strategy
from shared.spec import AggregationSpec

SHAPES = {"blocks.0.bias": (7,), "blocks.0.lora_A": (4, 9), "head.weight": (3, 5)}
CLIENTS = 5
CLIP = 6.0
OPTIONS: dict[str, dict[str, float]] = {
    "fedavgm": {"server_lr": 0.7, "momentum": 0.9},
    "fedadam": {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-2},
    "fedyogi": {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-2},
    "fedadagrad": {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-2},
    "trimmed_mean": {"trim_fraction": 0.2},
    "krum": {"num_byzantine": 1},
    "multi_krum": {"num_byzantine": 1, "num_selected": 3},
}

Arrays = dict[str, np.ndarray]


def _round(seed: int) -> tuple[list[Arrays], list[int]]:
    rng = np.random.default_rng(seed)
    deltas = [
        {k: rng.normal(scale=1 + i, size=s).astype(np.float32) for k, s in SHAPES.items()}
        for i in range(CLIENTS)
    ]
    return deltas, [int(n) for n in rng.integers(1, 400, CLIENTS)]


def _clipped(deltas: list[Arrays]) -> list[Arrays]:
    out = []
    for d in deltas:
        norm = np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in d.values()))
        scale = CLIP / norm if norm > CLIP else 1.0
        out.append({k: v.astype(np.float64) * scale for k, v in d.items()})
    return out


def _mean(deltas: list[Arrays], examples: list[int], name: str) -> np.ndarray:
    w = np.array(examples, dtype=np.float64) / sum(examples)
    return sum(wi * d[name] for wi, d in zip(w, deltas, strict=True))


def _krum(deltas: list[Arrays], f: int, m: int) -> Arrays:
    """Blanchard et al.: the mean of the m updates with the lowest sum of squared distances
    to their n - f - 2 nearest others (ties to the earlier update)."""
    flat = [np.concatenate([d[k].ravel() for k in sorted(d)]) for d in deltas]
    n = len(flat)
    dist = np.array([[np.sum((a - b) ** 2) for b in flat] for a in flat])
    scores = [np.sort(np.delete(dist[i], i))[: n - f - 2].sum() for i in range(n)]
    chosen = np.argsort(scores, kind="stable")[:m]
    return {k: np.mean([deltas[i][k] for i in chosen], axis=0) for k in deltas[0]}


def _reference(strategy: str, old: Arrays, deltas: list[Arrays], examples: list[int], st: Arrays):
    """One round of `strategy` in float64: (new state, new server state)."""
    o = OPTIONS.get(strategy, {})
    clipped = _clipped(deltas)
    new, server = {}, {}
    if strategy in ("krum", "multi_krum"):
        step = _krum(clipped, o["num_byzantine"], o.get("num_selected", 1))
        return {name: x + step[name] for name, x in old.items()}, server
    for name, x in old.items():
        stacked = np.stack([d[name] for d in clipped])
        if strategy == "median":
            new[name] = x + np.median(stacked, axis=0)
            continue
        if strategy == "trimmed_mean":
            k = int(np.floor(o["trim_fraction"] * CLIENTS))
            new[name] = x + np.sort(stacked, axis=0)[k : CLIENTS - k].mean(axis=0)
            continue
        delta = _mean(clipped, examples, name)
        if strategy == "fedavg":
            new[name] = x + delta
            continue
        m_prev = st.get(f"m/{name}", np.zeros_like(x))
        if strategy == "fedavgm":
            m = o["momentum"] * m_prev + delta
            new[name], server[f"m/{name}"] = x + o["server_lr"] * m, m
            continue
        v_prev = st.get(f"v/{name}", np.full_like(x, o["tau"] ** 2))
        m = o["beta1"] * m_prev + (1 - o["beta1"]) * delta
        sq = delta**2
        if strategy == "fedadam":
            v = o["beta2"] * v_prev + (1 - o["beta2"]) * sq
        elif strategy == "fedyogi":
            v = v_prev - (1 - o["beta2"]) * sq * np.sign(v_prev - sq)
        else:  # fedadagrad
            v = v_prev + sq
        new[name] = x + o["server_lr"] * m / (np.sqrt(v) + o["tau"])
        server[f"m/{name}"], server[f"v/{name}"] = m, v
    return new, server


def _as_deltas(deltas: list[Arrays], examples: list[int]) -> MemoryDeltas:
    return MemoryDeltas(
        (f"client-{i}", {k: torch.from_numpy(v) for k, v in d.items()}, n)
        for i, (d, n) in enumerate(zip(deltas, examples, strict=True))
    )


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_two_rounds_match_the_numpy_formula(strategy):
    spec = AggregationSpec(
        strategy=strategy,  # type: ignore[arg-type]
        clip_norm=CLIP,
        options=OPTIONS.get(strategy, {}),
    )
    rng = np.random.default_rng(0)
    old = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    ours_state = {k: torch.from_numpy(v) for k, v in old.items()}
    ours_server: dict[str, torch.Tensor] = {}
    ref_state: Arrays = {k: v.astype(np.float64) for k, v in old.items()}
    ref_server: Arrays = {}

    for round_seed in (1, 2):
        deltas, examples = _round(round_seed)
        result = get_strategy(strategy)(ours_state, _as_deltas(deltas, examples), spec, ours_server)
        ref_state, ref_server = _reference(strategy, ref_state, deltas, examples, ref_server)
        ours_state, ours_server = result.state, result.server_state

        assert set(ours_server) == set(ref_server)
        for name, want in [*ref_state.items(), *ref_server.items()]:
            got = (ours_state | ours_server)[name].numpy()
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=name)
