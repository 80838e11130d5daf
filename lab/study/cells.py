"""A cell: one frozen, fully specified run of the study, with an id derived from its fields.

The id is a readable prefix (family, base, method, alpha, shots, mode, seed)
and a hash over every field, so it is the same on every machine and in every
run, and changes whenever anything that could change the result changes.
Results are keyed by it; that is what makes a study resumable.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lab.datasets import DIGIT_PROMPT
from lab.study.grid import Grid
from shared.methods import METHODS
from shared.spec import FederationSpec, parse_spec

__all__ = ["DEFAULT_PROMPT", "Cell", "Setting", "dataset_key", "expand", "fmt_alpha", "fmt_shots"]

DEFAULT_PROMPT = "a photo of a {}."
# A round waits for every organisation; this only bounds a stuck cell.
ROUND_DEADLINE_S = 3600.0


def fmt_alpha(alpha: float | None) -> str:
    return "iid" if alpha is None else f"{alpha:g}"


def fmt_shots(shots: int | None) -> str:
    return "all" if shots is None else str(shots)


def dataset_key(grid: Grid) -> str:
    """How cells name their dataset: `digits-32px` or the ImageFolder's absolute path."""
    if grid.dataset in (None, "digits"):
        return f"digits-{grid.image_size}px"
    return str(_absolute(grid.dataset))


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


@dataclass(frozen=True)
class Setting:
    """What decides the data of a cell: the held-out split and the organisations' shares."""

    dataset: str
    test_fraction: float
    seed: int
    alpha: float | None
    shots: int | None
    organisations: int

    @property
    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Cell:
    """Everything one run depends on. `mode` is `federated` or `local` (each org alone)."""

    family: str
    arch: str
    base: str
    pretrained: str | None
    method: str
    method_options: str  # canonical JSON, so the cell stays hashable
    train_head: bool
    alpha: float | None
    shots: int | None
    mode: str
    seed: int
    organisations: int
    rounds: int
    local_epochs: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    dataset: str
    test_fraction: float
    prompt_template: str

    @property
    def id(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        return (
            f"{self.family}-{self.base}-{self.method}-a{fmt_alpha(self.alpha)}"
            f"-s{fmt_shots(self.shots)}-{self.mode}-seed{self.seed}-{digest[:10]}"
        )

    @property
    def setting(self) -> Setting:
        return Setting(
            self.dataset, self.test_fraction, self.seed, self.alpha, self.shots, self.organisations
        )

    def label(self) -> str:
        """One line for people: `open_clip pretrained bias α=0.1 shots=all federated`."""
        return (
            f"{self.family} {self.base} {self.method} α={fmt_alpha(self.alpha)} "
            f"shots={fmt_shots(self.shots)} {self.mode}"
        )

    def fields(self) -> dict[str, Any]:
        """The cell as CSV columns (alpha and shots spelled as in the grid)."""
        out = asdict(self)
        out["alpha"] = fmt_alpha(self.alpha)
        out["shots"] = fmt_shots(self.shots)
        out["pretrained"] = self.pretrained or ""
        return out

    def spec(self, classes: list[str]) -> FederationSpec:
        """The federation spec of this cell (also what each organisation trains alone)."""
        n = self.organisations
        return parse_spec(
            {
                "name": self.id,
                "model": {"family": self.family, "arch": self.arch, "pretrained": self.pretrained},
                "task": {"classes": classes, "prompt_template": self.prompt_template},
                "method": {
                    "name": self.method,
                    "train_head": self.train_head,
                    "options": json.loads(self.method_options),
                },
                "local_training": {
                    "epochs": self.local_epochs,
                    "batch_size": self.batch_size,
                    "optimizer": self.optimizer,
                    "lr": self.lr,
                    "weight_decay": self.weight_decay,
                },
                "rounds": {
                    "total": self.rounds,
                    "quorum": n,
                    "min_updates": n,
                    "deadline_s": ROUND_DEADLINE_S,
                },
                "aggregation": {"strategy": "fedavg", "weighting": "num_examples"},
                "seed": self.seed,
            }
        )


def expand(grid: Grid) -> list[Cell]:
    """Every cell of the grid, in grid order, each once (sweeps may overlap)."""
    seen: dict[str, Cell] = {}
    prompt = grid.prompt_template or (
        DIGIT_PROMPT if grid.dataset in (None, "digits") else DEFAULT_PROMPT
    )
    for _, sweep in grid.sweep_list():
        ax = grid.axes(sweep)
        product = itertools.product(
            grid.seeds, ax["alphas"], ax["shots"], ax["families"], ax["methods"], ax["bases"],
            ax["modes"],
        )  # fmt: skip
        for seed, alpha, shots, family, method, base, mode in product:
            if not METHODS[method].supports(family):
                continue
            cell = replace(
                _cell(grid, prompt, family, base, method, mode), alpha=alpha, shots=shots, seed=seed
            )
            seen.setdefault(cell.id, cell)
    return list(seen.values())


def _cell(grid: Grid, prompt: str, family: str, base: str, method: str, mode: str) -> Cell:
    model = grid.models[family]  # type: ignore[index]
    settings = grid.method_settings.get(method)
    return Cell(
        family=family,
        arch=model.arch,
        base=base,
        pretrained=model.pretrained if base == "pretrained" else None,
        method=method,
        method_options=json.dumps(settings.options if settings else {}, sort_keys=True),
        train_head=bool(settings and settings.train_head),
        alpha=None,
        shots=None,
        mode=mode,
        seed=0,
        organisations=grid.organisations,
        rounds=grid.rounds,
        local_epochs=grid.local_epochs,
        batch_size=grid.batch_size,
        optimizer=grid.optimizer,
        lr=(settings.lr if settings and settings.lr else grid.lr),
        weight_decay=grid.weight_decay,
        dataset=dataset_key(grid),
        test_fraction=grid.test_fraction,
        prompt_template=prompt,
    )
