"""`make demo`: a whole federation on this machine, from nothing to a trained model.

Starts `fedtune-server serve` on 127.0.0.1 (plain http, explicitly allowed for
this local demo), creates a federation on FedTune's tiny CLIP, enrolls three
organisations, gives each a non-IID share of scikit-learn's handwritten digits
(8x8 images upscaled to 32x32 PNG ImageFolders; a held-out test split is kept
aside), runs three `fedtune-client train` processes to completion and prints a
per-round table with the global model's accuracy on the held-out split.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from client_sdk._client import FedTuneClient
from lab.local_federation import (
    ClientProcess,
    ServerProcess,
    register,
    start_client,
    start_server,
    train_args,
)
from shared.api import FederationInfo, RoundRecord
from shared.blobs import read_header
from shared.spec import FederationSpec, parse_spec
from shared.tuning import BuiltModel, build

__all__ = ["DEMO_SPEC", "Digits", "main", "make_digit_folders"]

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ORGS = ["st-marys", "northfield-clinic", "harbour-labs"]
TARGET_ACCURACY = 0.85

DEMO_SPEC: dict[str, object] = {
    "name": "demo-digits-tiny-clip",
    "model": {"family": "open_clip", "arch": "fedtune-tiny-clip", "pretrained": None},
    "task": {"classes": CLASSES, "prompt_template": "a photo of the digit {}."},
    "method": {"name": "full"},
    "local_training": {"epochs": 2, "batch_size": 32, "optimizer": "adamw", "lr": 2e-3},
    "rounds": {"total": 20, "quorum": 3, "min_updates": 3, "deadline_s": 600},
    "aggregation": {"strategy": "fedavg", "weighting": "num_examples"},
    "transport": {"dtype": "float32"},
    "seed": 0,
}


@dataclass
class Digits:
    """The held-out test split, kept as PIL images for evaluating global states."""

    images: list[Image.Image]
    labels: list[int]


def _to_image(pixels: np.ndarray, size: int = 32) -> Image.Image:
    gray = (pixels.reshape(8, 8) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return (
        Image.fromarray(gray, mode="L")
        .resize((size, size), Image.Resampling.BILINEAR)
        .convert("RGB")
    )


def make_digit_folders(
    root: Path, orgs: list[str], *, seed: int = 0, alpha: float = 0.5, test_fraction: float = 0.2
) -> tuple[dict[str, Path], Digits]:
    """Write one ImageFolder per organisation (Dirichlet non-IID shares); return the test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    n_test = int(len(order) * test_fraction)
    test_idx, train_idx = order[:n_test], order[n_test:]
    test = Digits(
        [_to_image(digits.data[i]) for i in test_idx], [int(digits.target[i]) for i in test_idx]
    )
    shares: dict[str, list[int]] = {org: [] for org in orgs}
    for label in range(10):
        idx = [i for i in train_idx if digits.target[i] == label]
        cuts = (np.cumsum(rng.dirichlet([alpha] * len(orgs))) * len(idx)).astype(int)[:-1]
        for org, part in zip(orgs, np.split(np.array(idx), cuts), strict=True):
            shares[org].extend(int(i) for i in part)
    dirs = {}
    for org, idx in shares.items():
        folder = root / org / "data"
        for i in idx:
            path = folder / CLASSES[int(digits.target[i])] / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            _to_image(digits.data[i]).save(path)
        dirs[org] = folder
    return dirs, test


def evaluate(bm: BuiltModel, state_path: Path, test: Digits) -> float:
    """Accuracy of a downloaded global state on the held-out split."""
    read_header(state_path)
    bm.load_trainable_state(load_file(str(state_path)))
    transform = bm.transform(False)
    bm.model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test.images), 256):
            batch = torch.stack([transform(im) for im in test.images[start : start + 256]])
            preds = bm.model(batch).argmax(-1)
            correct += int((preds == torch.tensor(test.labels[start : start + 256])).sum())
    return correct / len(test.labels)


def _build_reference(admin: FedTuneClient, info: FederationInfo, scratch: Path) -> BuiltModel:
    if info.base_available:
        base = admin.download_base(info.id, scratch / "base.safetensors")
        bm = build(info.spec, base_state=load_file(str(base.path)))
    else:
        bm = build(info.spec)
    if bm.base_fingerprint() != info.base_fingerprint:
        raise SystemExit("demo: the reference model's base fingerprint differs from the server's")
    return bm


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


def _table(history: list[RoundRecord], accuracy: dict[int, float]) -> str:
    lines = [
        f"{'round':>5}  {'clients':>7}  {'mean local loss':>15}  {'held-out acc':>12}  "
        f"{'bytes up':>10}  {'bytes down':>10}",
        f"{0:>5}  {'-':>7}  {'-':>15}  {accuracy[0]:>12.3f}  {'-':>10}  {'-':>10}",
    ]
    for rec in history:
        loss = rec.metrics.get("train_loss")
        lines.append(
            f"{rec.round:>5}  {len(rec.participants):>7}  "
            f"{(f'{loss:.4f}' if loss is not None else '-'):>15}  "
            f"{accuracy.get(rec.round, float('nan')):>12.3f}  {rec.bytes_in:>10}  {rec.bytes_out:>10}"
        )
    return "\n".join(lines)


def run(root: Path, spec: FederationSpec) -> float:
    """Run the whole demo under `root`; returns the final held-out accuracy."""
    started = time.monotonic()
    print(f"demo: preparing non-IID digit shares for {len(ORGS)} organisations under {root}")
    data, test = make_digit_folders(root / "clients", ORGS)
    server = start_server(root / "server")
    try:
        print(f"demo: aggregator up at {server.url} (plain http, local demo only)")
        with server.admin() as admin:
            info = admin.create_federation(spec)
            print(
                f"demo: federation {info.id}: {spec.model.arch}, method {spec.method.name}, "
                f"{info.trainable_params}/{info.total_params} parameters train, "
                f"{spec.rounds.total} rounds"
            )
            creds = _enroll(server, admin, info.id, root / "clients")
            procs = _train_all(server, creds, data, root / "clients")
            _watch(admin, info.id, procs)
            failed = [p for p in procs if p.wait() != 0]
            for p in failed:
                print(f"demo: client {p.name} failed:\n{p.output()[-2000:]}", file=sys.stderr)
            if failed:
                raise SystemExit(1)
            history = admin.list_rounds(info.id)
            accuracy = _accuracies(admin, info, test, len(history))
    finally:
        server.stop()
    print(_table(history, accuracy))
    final = accuracy[len(history)]
    print(
        f"\ndemo: final held-out accuracy {final:.3f} (target {TARGET_ACCURACY}) on "
        f"{len(test.labels)} images in {time.monotonic() - started:.0f}s"
    )
    _explain(root)
    return final


def _accuracies(
    admin: FedTuneClient, info: FederationInfo, test: Digits, rounds: int
) -> dict[int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        bm = _build_reference(admin, info, scratch)
        accuracy = {}
        for r in range(rounds + 1):
            state = admin.download_state(info.id, scratch / f"v{r}.safetensors", version=r)
            accuracy[r] = evaluate(bm, state.path, test)
    return accuracy


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
    # open_clip notes the random init of the tiny model; the demo builds it on purpose.
    logging.getLogger().addFilter(
        lambda r: not str(r.msg).startswith("No pretrained weights loaded")
    )
    accuracy = run(root.absolute(), parse_spec(DEMO_SPEC))
    return 0 if accuracy >= TARGET_ACCURACY else 1


if __name__ == "__main__":
    sys.exit(main())
