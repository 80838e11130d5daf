"""`make demo`: three organisations bias-tune a pre-trained CLIP without sharing an image.

What the product is for, on one machine: FedTune's self-made pre-trained tiny
CLIP (`fedtune-synth-clip`, tag `fedtune-synth-v1`, built once on first use and
cached) starts with a zero-shot head made from the class prompts ("a photo of
the digit seven."); three organisations, each holding a non-IID share of
scikit-learn's handwritten digits, tune only the vision tower's bias terms and
that head, and send those few tensors each round.

Starts `fedtune-server serve` on 127.0.0.1 (plain http, explicitly allowed for
this local demo), creates the federation, enrolls the organisations, runs
three `fedtune-client train` processes to completion and prints round 0
(zero-shot accuracy) and one row per round with the global model's accuracy
on a held-out split no organisation holds, and the bytes each organisation
sent against what full fine-tuning would have sent.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from client_sdk._client import FedTuneClient
from lab.bases import ensure_base
from lab.datasets import (
    DIGIT_CLASSES,
    DIGIT_PROMPT,
    LabeledImages,
    dirichlet_shares,
    load_digits,
    split_held_out,
    write_image_folders,
)
from lab.evaluation import round_accuracies
from lab.local_federation import (
    ClientProcess,
    ServerProcess,
    register,
    start_client,
    start_server,
    train_args,
)
from shared.api import FederationInfo, RoundRecord
from shared.spec import FederationSpec, parse_spec
from shared.tuning.report import method_reports

__all__ = ["DEMO_SPEC", "main", "make_digit_folders", "run"]

ORGS = ["st-marys", "northfield-clinic", "harbour-labs"]
TARGET_ACCURACY = 0.90
ARCH, TAG = "fedtune-synth-clip", "fedtune-synth-v1"

DEMO_SPEC: dict[str, object] = {
    "name": "demo-digits-synth-clip-bias",
    "model": {"family": "open_clip", "arch": ARCH, "pretrained": TAG},
    "task": {"classes": DIGIT_CLASSES, "prompt_template": DIGIT_PROMPT},
    "method": {"name": "bias", "train_head": True},
    "local_training": {"epochs": 3, "batch_size": 32, "optimizer": "adamw", "lr": 3e-3},
    "rounds": {"total": 10, "quorum": 3, "min_updates": 3, "deadline_s": 600},
    "aggregation": {"strategy": "fedavg", "weighting": "num_examples"},
    "transport": {"dtype": "float32"},
    "seed": 0,
}


def make_digit_folders(
    root: Path, orgs: list[str], *, seed: int = 0, alpha: float = 0.5, test_fraction: float = 0.2
) -> tuple[dict[str, Path], LabeledImages]:
    """One ImageFolder per organisation (Dirichlet non-IID shares); return the held-out split."""
    data = load_digits()
    rng = np.random.default_rng(seed)
    train, test = split_held_out(data.labels, test_fraction, rng)
    shares = dirichlet_shares(train, data.labels, len(orgs), alpha, rng)
    dirs = write_image_folders(root, data, dict(zip(orgs, shares, strict=True)))
    return dirs, data.subset(test)


def _enroll(server: ServerProcess, admin: FedTuneClient, fid: str, root: Path) -> dict[str, Path]:
    creds = {}
    for org in ORGS:
        token = admin.create_enrollment_token(fid, uses=1)
        creds[org] = root / org / "credentials.json"
        register(server, token.token, org, creds[org], "--force")
    return creds


def _train_all(
    server: ServerProcess, creds: dict[str, Path], data: dict[str, Path], root: Path
) -> list[ClientProcess]:
    return [
        start_client(
            org,
            train_args(server, creds[org], data[org], root / org / "work"),
            root / org / "client.log",
        )
        for org in ORGS
    ]


def _watch(admin: FedTuneClient, fid: str, procs: list[ClientProcess]) -> None:
    """Print one line per round as it closes, until every client has exited."""
    shown = 0
    status = admin.current_round(fid)
    while any(p.proc.poll() is None for p in procs):
        status = admin.current_round(fid, wait_s=5, revision=status.revision)
        closed = status.round - 1 if status.federation_status == "running" else status.round
        while shown < closed:
            shown += 1
            print(f"  round {shown}/{status.total_rounds} aggregated", flush=True)


def _table(history: list[RoundRecord], accuracy: list[float], full_bytes: int) -> str:
    lines = [
        f"{'round':>5}  {'clients':>7}  {'mean local loss':>15}  {'held-out acc':>12}  "
        f"{'sent per org':>12}  {'full FT would send':>18}",
        f"{0:>5}  {'-':>7}  {'(zero-shot)':>15}  {accuracy[0]:>12.3f}  {'-':>12}  {'-':>18}",
    ]
    for rec in history:
        loss = rec.metrics.get("train_loss")
        per_org = rec.bytes_in // max(rec.participant_count, 1)
        lines.append(
            f"{rec.round:>5}  {rec.participant_count:>7}  "
            f"{(f'{loss:.4f}' if loss is not None else '-'):>15}  "
            f"{accuracy[rec.round]:>12.3f}  {_kib(per_org):>12}  {_kib(full_bytes):>18}"
        )
    return "\n".join(lines)


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB"


def _update_bytes(spec: FederationSpec, method: str) -> int:
    """What one update of `method` on the spec's model weighs in its transport dtype."""
    return next(r.bytes_per_update for r in method_reports(spec) if r.method == method)


def run(root: Path, spec: FederationSpec) -> float:
    """Run the whole demo under `root`; returns the final held-out accuracy."""
    started = time.monotonic()
    _ensure_base(spec)
    print(f"demo: non-IID digit shares for {len(ORGS)} organisations under {root}")
    data, test = make_digit_folders(root / "clients", ORGS)
    server = start_server(root / "server")
    try:
        print(f"demo: aggregator up at {server.url} (plain http, local demo only)")
        with server.admin() as admin:
            info = admin.create_federation(spec)
            _announce(info)
            creds = _enroll(server, admin, info.id, root / "clients")
            procs = _train_all(server, creds, data, root / "clients")
            _watch(admin, info.id, procs)
            failed = [p for p in procs if p.wait() != 0]
            for p in failed:
                print(f"demo: client {p.name} failed:\n{p.output()[-2000:]}", file=sys.stderr)
            if failed:
                raise SystemExit(1)
            history = admin.list_rounds(info.id)
            accuracy = round_accuracies(admin, info, test, len(history))
    finally:
        server.stop()
    print(_table(history, accuracy, _update_bytes(spec, "full")))
    final = accuracy[-1]
    print(
        f"\ndemo: held-out accuracy {accuracy[0]:.3f} zero-shot -> {final:.3f} after "
        f"{len(history)} rounds (target {TARGET_ACCURACY}) on {len(test)} images, "
        f"{time.monotonic() - started:.0f}s in all"
    )
    _explain(root)
    return final


def _ensure_base(spec: FederationSpec) -> None:
    started = time.monotonic()
    ensure_base(spec.model.arch, str(spec.model.pretrained))
    if time.monotonic() - started > 5:
        print(f"demo: base built in {time.monotonic() - started:.0f}s (cached from now on)")


def _announce(info: FederationInfo) -> None:
    spec = info.spec
    full, update = _update_bytes(spec, "full"), _update_bytes(spec, spec.method.name)
    print(
        f"demo: federation {info.id}: {spec.model.arch} pre-trained ({spec.model.pretrained}), "
        f"method {spec.method.name} + zero-shot head, {spec.rounds.total} rounds\n"
        f"      {info.trainable_params:,} of {info.total_params:,} parameters train "
        f"({info.trainable_params / info.total_params:.2%}); each update is {_kib(update)}, "
        f"full fine-tuning would send {_kib(full)} ({full / update:.0f}x more)"
    )


def _explain(root: Path) -> None:
    with contextlib.suppress(ValueError):
        root = root.relative_to(Path.cwd())
    server, clients = root / "server", root / "clients"
    db = next(iter(sorted(server.glob("*.db"))), server / "<database>.db")
    print(
        f"demo: the aggregator's data is left in {server}:\n"
        f"      sqlite3 {db} .tables     # federations, rounds, updates, clients\n"
        f"      ls {server / 'blobs' / 'sha256'}   # content-addressed states and deltas\n"
        f"      less {server / 'server.log'}\n"
        f"      each organisation's work dir (journal, deltas, final model) is under "
        f"{clients}/<org>/work, its log in {clients}/<org>/client.log.\n"
        f"      Serve it again: fedtune-server serve --data-dir {server} --host 127.0.0.1 "
        "--port 8000"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path("demo-data"), help="where to put it all")
    args = parser.parse_args(argv)
    root: Path = args.dir
    if root.exists():
        shutil.rmtree(root)
    torch.set_num_threads(2)
    accuracy = run(root.absolute(), parse_spec(DEMO_SPEC))
    return 0 if accuracy >= TARGET_ACCURACY else 1


if __name__ == "__main__":
    sys.exit(main())
