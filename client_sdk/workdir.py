"""The client's work directory and its journal: what makes a restart safe.

Layout of a work dir (one per registered client):

    journal.json                  round -> written | uploaded | abandoned, delta sha256
    round-<r>.delta.safetensors   the delta exactly as uploaded (same bytes on every retry)
    state/<sha256>.safetensors    global states received (checked against their sha256)
    base/<fingerprint>.safetensors  the frozen base, when the server serves it
    final/                        the final trainable state and the spec, when done

A delta is written (atomically) before the journal says `written`, and the
journal says `uploaded` only after the server acknowledged it, so a client
killed at any point never retrains an acknowledged round and re-sends a
written-but-unacknowledged delta unchanged.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from client_sdk._exceptions import FedTuneError
from shared.blobs import atomic_write_bytes

__all__ = ["JournalEntry", "WorkDir", "WorkDirError", "safe_id"]

EntryStatus = Literal["written", "uploaded", "abandoned"]

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class WorkDirError(FedTuneError):
    """A work dir that belongs to another client or cannot be used."""


def _checked(value: str, pattern: re.Pattern[str], what: str) -> str:
    """Refuse a server-sent value that is not a plain name before it becomes part of a path."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise WorkDirError(f"refusing {what} {value!r} from the server: not a plain safe name")
    return value


def safe_id(value: str, what: str = "id") -> str:
    """`value` if it is a client or federation id safe as one path component."""
    return _checked(value, _NAME, what)


@dataclass
class JournalEntry:
    status: EntryStatus
    sha256: str
    base_version: str
    num_examples: int
    detail: str = ""


class WorkDir:
    def __init__(self, root: str | Path, federation_id: str, client_id: str) -> None:
        self.root = Path(root)
        self.federation_id = safe_id(federation_id, "federation id")
        self.client_id = safe_id(client_id, "client id")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkDirError(f"cannot create work dir {self.root}: {exc.strerror}") from None
        self._journal = self.root / "journal.json"
        self.rounds: dict[int, JournalEntry] = {}
        self._load()

    def _load(self) -> None:
        if not self._journal.exists():
            self._save()
            return
        try:
            raw = json.loads(self._journal.read_text(encoding="utf-8"))
            owner = (raw["federation_id"], raw["client_id"])
            rounds = {int(r): JournalEntry(**e) for r, e in raw["rounds"].items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise WorkDirError(
                f"journal {self._journal} is unreadable ({exc}); move it away"
            ) from None
        if owner != (self.federation_id, self.client_id):
            raise WorkDirError(
                f"work dir {self.root} belongs to client {owner[1]} of federation {owner[0]}; "
                "use another --work-dir"
            )
        self.rounds = rounds

    def _save(self) -> None:
        raw = {
            "federation_id": self.federation_id,
            "client_id": self.client_id,
            "rounds": {str(r): asdict(e) for r, e in sorted(self.rounds.items())},
        }
        atomic_write_bytes(self._journal, (json.dumps(raw, indent=2) + "\n").encode())

    def record(self, round: int, entry: JournalEntry) -> None:
        self.rounds[round] = entry
        self._save()

    def entry(self, round: int) -> JournalEntry | None:
        return self.rounds.get(round)

    def delta_path(self, round: int) -> Path:
        return self.root / f"round-{round}.delta.safetensors"

    def prune_deltas(self, before: int) -> None:
        """Delete delta files of acknowledged rounds before `before` (the journal keeps their sha)."""
        for r, entry in self.rounds.items():
            if r < before and entry.status != "written":
                self.delta_path(r).unlink(missing_ok=True)

    def state_path(self, sha256: str) -> Path:
        return self.root / "state" / f"{_checked(sha256, _DIGEST, 'global version')}.safetensors"

    def base_path(self, fingerprint: str) -> Path:
        digest = _checked(fingerprint, _DIGEST, "base fingerprint")
        return self.root / "base" / f"{digest}.safetensors"

    @property
    def final_dir(self) -> Path:
        return self.root / "final"
