"""Poisoning: held-out accuracy of each aggregation strategy with 20 % attacking organisations.

Ten organisations bias-tune FedTune's self-made pre-trained tiny CLIP
(`fedtune-synth-clip`, tag `fedtune-synth-v1`, built once and cached) with its
zero-shot head, each on a non-IID share of scikit-learn's digits; two of them
attack every round with the lab's harness (`lab.attacks`): they train like the
others, then send -10 x their delta (`sign_flip`), 10 x it (`scale`) or Gaussian
noise of its norm (`gaussian`). Every federation is real: a `fedtune-server
serve` process, the SDK's participate loop per organisation over HTTP, and an
outside observer scoring each global state on 360 held-out digits no
organisation holds.

The table: strategy x attack -> final held-out accuracy, next to the same
strategy's accuracy with no attacker (all ten honest), and the drop in points.

Settings, fixed before the first run (not tuned to the outcome):
- data: digits, 20 % held out (stratified, seed 0), the rest split over 10
  organisations by Dirichlet alpha = 0.5 (seed 0), as in `make demo`;
- attackers: organisations 3 and 8 of 10 (org-03, org-08), 20 %;
- training: bias + head, 2 local epochs, batch 32, AdamW lr 3e-3, 5 rounds,
  quorum = min_updates = 10 (every round waits for all ten);
- strategies: fedavg (example-weighted), median, trimmed_mean (trim_fraction 0.2),
  krum and multi_krum (num_byzantine 2; multi-Krum averages n - f = 8): the robust
  ones are told the true attacker fraction;
- bounds: `default` keeps the service's defaults as a user has them (clip_norm
  10 for lightweight methods, max_weight_share 0.5, max_abs_value 1e4); `off` sets
  clip_norm null, max_weight_share 1 and max_abs_value null, to show what the
  strategies alone do.

Rows are appended to `<out>/poisoning-<bounds>.csv` as each federation ends,
and a run skips the rows it finds there (resumable); the table is drawn from
that file alone (`--table-only`).

Usage: python benchmarks/poisoning.py [--bounds default|off] [--out DIR] [--table-only]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.attacks import Attack, run_poisoned
from lab.attacks.federation import org_name
from lab.bases import ensure_base
from lab.demo import DEMO_SPEC, make_digit_folders
from lab.local_federation import start_server
from shared.spec import FederationSpec, parse_spec

ORGS = 10
ATTACKERS = (2, 7)  # org-03 and org-08
ROUNDS = 5
STRATEGIES: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "median": {},
    "trimmed_mean": {"trim_fraction": 0.2},
    "krum": {"num_byzantine": 2},
    "multi_krum": {"num_byzantine": 2},
}
ATTACKS: dict[str, Attack | None] = {
    "none": None,
    "sign_flip": Attack("sign_flip", 10.0),
    "scale": Attack("scale", 10.0),
    "gaussian": Attack("gaussian"),
}
BOUNDS_OFF = {"clip_norm": None, "max_weight_share": 1.0, "max_abs_value": None}
COLUMNS = [
    "bounds", "strategy", "attack", "final_accuracy", "initial_accuracy", "curve",
    "honest_norm_median", "attacker_norm_median", "wall_s",
]  # fmt: skip


def spec_for(strategy: str, bounds: str) -> FederationSpec:
    """The demo's federation, for ten organisations, under `strategy` and the given bounds."""
    aggregation: dict[str, Any] = {"strategy": strategy, "options": STRATEGIES[strategy]}
    if bounds == "off":
        aggregation |= BOUNDS_OFF
    data = {
        **DEMO_SPEC,
        "name": f"poisoning-{strategy}",
        "local_training": {"epochs": 2, "batch_size": 32, "optimizer": "adamw", "lr": 3e-3},
        "rounds": {"total": ROUNDS, "quorum": ORGS, "min_updates": ORGS, "deadline_s": 600},
        "aggregation": aggregation,
    }
    return parse_spec(data)


def _done(csv_path: Path) -> list[dict[str, str]]:
    if not csv_path.exists():
        return []
    with csv_path.open(newline="") as f:
        return list(csv.DictReader(f))


def _append(csv_path: Path, row: dict[str, Any]) -> None:
    new = not csv_path.exists()
    with csv_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def run_all(out: Path, bounds: str) -> Path:
    """Run every (strategy, attack) federation not yet in the CSV; returns the CSV's path."""
    csv_path = out / f"poisoning-{bounds}.csv"
    have = {(r["strategy"], r["attack"]) for r in _done(csv_path)}
    todo = [(s, a) for s in STRATEGIES for a in ATTACKS if (s, a) not in have]
    if not todo:
        return csv_path
    spec0 = spec_for("fedavg", bounds)
    ensure_base(spec0.model.arch, str(spec0.model.pretrained))
    names = [org_name(k, ORGS) for k in range(ORGS)]
    folders, test = make_digit_folders(out / "clients", names, seed=0, alpha=0.5)
    server = start_server(out / "server")
    try:
        for strategy, attack in todo:
            started = time.perf_counter()
            work = out / "work" / f"{bounds}-{strategy}-{attack}"
            shutil.rmtree(work, ignore_errors=True)
            poison = ATTACKS[attack]
            run = run_poisoned(
                server,
                spec_for(strategy, bounds),
                [folders[n] for n in names],
                test,
                work,
                attackers={k: poison for k in ATTACKERS} if poison is not None else {},
            )
            shutil.rmtree(work, ignore_errors=True)
            honest = [x for n, v in run.sent_norms.items() if n not in run.attackers for x in v]
            bad = [x for n in run.attackers for x in run.sent_norms[n]]
            row = {
                "bounds": bounds,
                "strategy": strategy,
                "attack": attack,
                "final_accuracy": round(run.accuracy[-1], 4),
                "initial_accuracy": round(run.accuracy[0], 4),
                "curve": json.dumps([round(a, 4) for a in run.accuracy]),
                "honest_norm_median": round(median(honest), 4),
                "attacker_norm_median": round(median(bad), 4) if bad else "",
                "wall_s": round(time.perf_counter() - started, 1),
            }
            _append(csv_path, row)
            print(
                f"  {strategy:<12} {attack:<10} final {row['final_accuracy']:.3f} "
                f"({row['wall_s']:.0f} s)",
                flush=True,
            )
    finally:
        server.stop()
    return csv_path


def table(rows: list[dict[str, str]]) -> str:
    """strategy x attack: final accuracy (drop from the same strategy's clean run, points)."""
    acc = {(r["strategy"], r["attack"]): float(r["final_accuracy"]) for r in rows}
    labels = {a: attack.label for a, attack in ATTACKS.items() if attack is not None}
    attacks = list(labels)
    head = f"{'strategy':<13}{'no attack':>10}" + "".join(f"{labels[a]:>22}" for a in attacks)
    lines = [head]
    for s in STRATEGIES:
        clean = acc.get((s, "none"))
        cells = [f"{clean:>10.3f}" if clean is not None else f"{'-':>10}"]
        for a in attacks:
            got = acc.get((s, a))
            if got is None:
                cells.append(f"{'-':>22}")
            elif clean is None:
                cells.append(f"{got:>22.3f}")
            else:
                cells.append(f"{f'{got:.3f} ({100 * (got - clean):+.1f})':>22}")
        lines.append(f"{s:<13}" + "".join(cells))
    return "\n".join(lines)


def norms_line(rows: list[dict[str, str]]) -> str:
    """What the norm bound saw: median L2 norm of honest and of poisoned updates, per attack."""
    parts = []
    for a in ATTACKS:
        sel = [r for r in rows if r["attack"] == a]
        if not sel:
            continue
        honest = median(float(r["honest_norm_median"]) for r in sel)
        if a == "none":
            parts.append(f"honest {honest:.3f}")
        else:
            bad = median(float(r["attacker_norm_median"]) for r in sel)
            parts.append(f"{a} {bad:.3f}")
    return "median update L2 norm: " + ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bounds", choices=["default", "off"], default="default")
    parser.add_argument("--out", type=Path, default=Path(".fedtune/poisoning"))
    parser.add_argument("--table-only", action="store_true", help="print the table from the CSV")
    args = parser.parse_args(argv)
    out: Path = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"poisoning-{args.bounds}.csv"
    if not args.table_only:
        torch.set_num_threads(2)
        started = time.perf_counter()
        print(
            f"poisoning: {len(STRATEGIES)} strategies x {len(ATTACKS)} attacks, bounds {args.bounds}"
        )
        run_all(out, args.bounds)
        print(f"poisoning: done in {time.perf_counter() - started:.0f} s")
    rows = _done(csv_path)
    if not rows:
        print(f"poisoning: no results in {csv_path}", file=sys.stderr)
        return 2
    spec = spec_for("fedavg", args.bounds).aggregation
    print(
        f"\nbounds {args.bounds}: clip_norm {spec.clip_norm}, max_weight_share "
        f"{spec.max_weight_share}, max_abs_value {spec.max_abs_value}; "
        f"{len(ATTACKERS)} of {ORGS} organisations attack; final held-out accuracy "
        f"(change from the strategy's clean run, points)"
    )
    print(table(rows))
    print(norms_line(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
