"""The participate loop: poll, fetch, train, upload, until the federation completes.

Every step is restart-safe through the work dir's journal (see `workdir`):
an acknowledged round is never retrained, a written delta is re-sent unchanged,
and a 409 (stale base, closed round) just moves on to the next round.
Training is seeded by the spec's seed, the organisation's registered name and
the round (see `training`), so a restarted client retrains a round exactly.

While the operator has the federation paused the loop waits (a delta refused because of the
pause stays written, and is sent once the federation resumes); a cancelled federation ends
the loop with `FederationCancelledError`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from client_sdk import _constants as C
from client_sdk._client import FedTuneClient
from client_sdk._exceptions import ConflictError, FedTuneError
from client_sdk.data import load_local_data
from client_sdk.secagg import SecureRound
from client_sdk.sync import StateStore, prepare_model
from client_sdk.training import LocalTrainer, resolve_device
from client_sdk.workdir import JournalEntry, WorkDir
from shared.api import RoundStatus
from shared.blobs import atomic_save_state, sha256_file

__all__ = ["FederationCancelledError", "Participant", "ParticipateOptions", "participate"]

log = logging.getLogger("client_sdk")

# Upload refusals that say nothing against the delta: the federation was paused (it is sent
# again on resume) or cancelled (the loop then stops).
_HELD = ("federation_paused", "federation_cancelled")


class FederationCancelledError(FedTuneError):
    """The operator cancelled the federation: there will be no more rounds, nor a final model."""

    def __init__(self, federation_id: str, round: int) -> None:
        super().__init__(
            f"federation {federation_id} was cancelled by its operator (in round {round}); "
            "this client stops, and there is no final model"
        )
        self.federation_id = federation_id


@dataclass(frozen=True)
class ParticipateOptions:
    """How one organisation takes part in a federation (`fedtune-client train`'s options)."""

    federation_id: str
    data: Path
    """The organisation's images: one folder per class, named as the spec's classes."""
    work_dir: Path
    """Where the state, the deltas and the protocol's progress are kept between runs."""
    device: str = "auto"
    """"auto", "cpu", "cuda" or "mps"."""
    val_fraction: float = 0.1
    """The share of the images held out for local validation."""
    progress: bool = True
    """Progress bars (False: log lines only)."""
    wait_s: int = C.MAX_WAIT_S // 2
    """How long one long-poll for the next round waits at the server."""
    organisation: str = ""
    """The organisation's registered name (its credentials' `name`): with the spec's seed and
    the round it seeds local training. The server's client id would differ between runs."""
    num_workers: int | None = None
    """DataLoader worker processes per training process (None: the cores less one, at most 8)."""
    rank: int = 0
    """This process's rank among `world` training processes (see `distributed`)."""
    world: int = 1


class Participant:
    """One client's part in a federation; `run()` returns the final model's path."""

    def __init__(self, client: FedTuneClient, client_id: str, options: ParticipateOptions) -> None:
        self.client, self.opts = client, options
        self.info = client.get_federation(options.federation_id)
        spec = self.info.spec
        data = load_local_data(options.data, spec.task.classes)
        counts = ", ".join(f"{k}={v}" for k, v in data.class_counts(spec.task.classes).items())
        log.info("local data: %d images (%s)", len(data.samples), counts)
        device = resolve_device(options.device)
        self.workdir = WorkDir(options.work_dir, self.info.id, client_id)
        bm = prepare_model(client, self.info, self.workdir, progress=options.progress)
        log.info(
            "model %s/%s, method %s: %d of %d parameters train; base fingerprint matches",
            spec.model.family,
            spec.model.arch,
            spec.method.name,
            self.info.trainable_params,
            self.info.total_params,
        )
        self.trainer = LocalTrainer(
            spec,
            bm,
            data,
            device=device,
            val_fraction=options.val_fraction,
            organisation=options.organisation,
            progress=options.progress,
            num_workers=options.num_workers,
            rank=options.rank,
            world=options.world,
        )
        self.states = StateStore(client, self.info, self.workdir)
        self.secure = (
            SecureRound(client, spec, self.info.id, client_id, options.work_dir)
            if spec.secure_aggregation is not None
            else None
        )
        self._noted: set[int] = set()
        self._paused = False

    def run(self) -> Path:
        fid = self.info.id
        status = self.client.current_round(fid)
        while status.federation_status != "completed":
            if status.federation_status == "cancelled":
                raise FederationCancelledError(fid, status.round)
            if status.federation_status == "paused":
                status = self._wait_while_paused(status)
                continue
            if status.status == "open" and not self.handle_round(status):
                status = self.client.current_round(fid)  # refused for a pause or cancel
                continue
            # Handled (or not ours to handle): wake for the next round, not for others' uploads.
            status = self.client.current_round(
                fid, wait_s=self.opts.wait_s, after_round=status.round
            )
        return self.finish(status)

    def _wait_while_paused(self, status: RoundStatus) -> RoundStatus:
        """Long-poll until anything changes (a resume or cancel bumps the round's revision)."""
        if not self._paused:
            self._paused = True
            log.info("federation paused by its operator; waiting for it to resume")
        status = self.client.current_round(
            self.info.id, wait_s=self.opts.wait_s, revision=status.revision
        )
        if status.federation_status == "running":
            self._paused = False
            log.info("federation resumed")
        return status

    def handle_round(self, status: RoundStatus) -> bool:
        """Train and upload for round `status.round` unless done before; False when the
        upload was refused because the federation was paused or cancelled meanwhile."""
        r = status.round
        entry = self.workdir.entry(r)
        if entry is not None and entry.status in ("uploaded", "abandoned"):
            self._note(r, f"{entry.status} before; waiting for the next round")
            return True
        pending = entry is not None and entry.status == "written" and self._intact(r, entry)
        if status.submitted and not pending:
            self._note(r, "the server already has this client's update")
            return True
        if pending and entry is not None and entry.base_version == status.global_version:
            log.info("round %d: re-sending the delta written before a restart", r)
        else:
            entry = self._train(status)
        return self._upload(r, entry)

    def _note(self, r: int, message: str) -> None:
        """Log once per round (the loop wakes on every change of the round)."""
        if r not in self._noted:
            self._noted.add(r)
            log.info("round %d: %s", r, message)

    def _intact(self, r: int, entry: JournalEntry) -> bool:
        path = self.workdir.delta_path(r)
        return path.exists() and sha256_file(path) == entry.sha256

    def _train(self, status: RoundStatus) -> JournalEntry:
        r = status.round
        state = self.states.get(status.global_version, progress=self.opts.progress)
        log.info(
            "round %d/%d: training on %d examples",
            r,
            status.total_rounds,
            self.trainer.num_examples,
        )
        result = self.trainer.run_round(
            r,
            state,
            federation_id=self.info.id,
            base_version=status.global_version,
            dest=self.workdir.delta_path(r),
        )
        m = result.metrics
        log.info(
            "round %d: loss %.4f, local accuracy %.3f, global val accuracy %s, %.0f examples/s",
            r,
            m["train_loss"],
            m["train_accuracy"],
            f"{m['val_accuracy']:.3f}" if "val_accuracy" in m else "n/a",
            m["examples_per_s"],
        )
        entry = JournalEntry("written", result.sha256, status.global_version, result.num_examples)
        self.workdir.record(r, entry)
        return entry

    def _upload(self, r: int, entry: JournalEntry) -> bool:
        if self.secure is not None:
            return self._secure(self.secure, r, entry)
        try:
            receipt = self.client.upload_update(
                self.info.id, r, self.workdir.delta_path(r), progress=self.opts.progress
            )
        except ConflictError as exc:
            if exc.code in _HELD:  # kept as written: sent again once the federation resumes
                log.info("round %d: update not taken now (%s)", r, exc.code)
                return False
            log.warning("round %d: update not taken (%s); moving on", r, exc.detail or exc.code)
            entry.status, entry.detail = "abandoned", exc.code
            self.workdir.record(r, entry)
            return True
        entry.status = "uploaded"
        self.workdir.record(r, entry)
        self.workdir.prune_deltas(before=r)
        log.info(
            "round %d: update accepted%s (%d/%d received)",
            r,
            " (already had it)" if receipt.duplicate else "",
            receipt.received,
            receipt.quorum,
        )
        return True

    def _secure(self, secure: SecureRound, r: int, entry: JournalEntry) -> bool:
        """Secure aggregation in place of one upload: `SecureRound.run` sends the keys, the
        encrypted shares, the masked input and the unmasking shares, through every attempt of
        the round, until the round closes. The delta stays "written" until then, so a restarted
        client takes part in the round's later attempts too."""
        done = secure.run(r, self.workdir.delta_path(r), entry.num_examples)
        if done is None:  # paused or cancelled meanwhile: kept as written
            return False
        entry.status = "uploaded" if done else "abandoned"
        entry.detail = "" if done else "the secure round closed without this client's input"
        self.workdir.record(r, entry)
        if done:
            self.workdir.prune_deltas(before=r)
            log.info("round %d: secure aggregation done", r)
        return True

    def finish(self, status: RoundStatus) -> Path:
        """Evaluate the final global state and report it; save it and the spec under `final/`."""
        state = self.states.get(status.global_version, progress=self.opts.progress)
        self._report_final(status.global_version, state)
        final = self.workdir.final_dir
        final.mkdir(parents=True, exist_ok=True)
        path = final / "trainable.safetensors"
        atomic_save_state(
            path, state, {"federation": self.info.id, "global_version": status.global_version}
        )
        spec_path = final / "spec.json"
        spec_path.write_text(json.dumps(self.info.spec.model_dump(mode="json"), indent=2) + "\n")
        base = self.workdir.base_path(self.info.base_fingerprint)
        if base.exists():
            shutil.copyfile(base, final / "base.safetensors")
        return path

    def _report_final(self, version: str, state: Mapping[str, torch.Tensor]) -> None:
        """The final version's accuracy on the local validation split, kept by the service.

        Round r's update reports the accuracy of the version it trained from, so no update
        carries the final one's. Evaluation is deterministic, so a restarted client reports
        the same figures again, which the service takes as a repeat.
        """
        accuracy = self.trainer.evaluate_state(state)
        if accuracy is None or not math.isfinite(accuracy):
            log.info("final model: no validation split to evaluate it on")
            return
        examples = self.trainer.num_val_examples
        try:
            self.client.report_evaluation(self.info.id, version, accuracy, examples)
        except ConflictError as exc:
            log.warning("final evaluation not taken (%s)", exc.detail or exc.code)
        log.info("final model: val accuracy %.3f on %d examples", accuracy, examples)


def participate(client: FedTuneClient, client_id: str, options: ParticipateOptions) -> Path:
    """Take part until the federation completes; returns the saved final model."""
    return Participant(client, client_id, options).run()
