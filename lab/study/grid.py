"""A study grid as data: what to compare, read from YAML and checked field by field.

The axes (families, bases, methods, alphas, shots, modes) at the top level form
one cross product. `sweeps` replaces that with the union of several cross
products, each overriding some top-level axes, so a grid can spend its budget
on the comparisons it needs instead of the full product. Everything else
(dataset, organisations, rounds, local epochs, seeds, models, per-method
learning rates) is shared by every cell.

Every problem is one line that names the field: `methods.2: Input should be 'full', ...`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.families import Family
from shared.methods import METHODS, MethodName
from shared.validation import format_validation_error, load_document

__all__ = [
    "AXES",
    "PRESETS",
    "Grid",
    "GridError",
    "MethodSettings",
    "ModelChoice",
    "Sweep",
    "load_grid",
    "load_preset",
    "parse_grid",
]

# the methods that need CLIP, as their declarations say
AXES = ("families", "bases", "methods", "alphas", "shots", "modes")
PRESETS = ("quick", "paper")

Base = Literal["pretrained", "random"]
Mode = Literal["federated", "local"]


class GridError(ValueError):
    """A grid that cannot be run; the message is one line naming the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelChoice(_Strict):
    arch: str = Field(min_length=1, description="Architecture (open_clip name, HF id or dir).")
    pretrained: str | None = Field(
        description="The pre-trained base: tag, self-made base tag or weights path. "
        "The random-init base is the same arch with no weights."
    )


class MethodSettings(_Strict):
    lr: float | None = Field(default=None, gt=0, le=10, description="Local learning rate.")
    options: dict[str, Any] = Field(default_factory=dict, description="Method options.")
    train_head: bool = Field(default=False, description="Also train the classifier head.")


def _check_alphas(values: Any) -> Any:
    if not isinstance(values, list):
        return values
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None or v == "iid":
            out.append(None)
        elif isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
            out.append(float(v))
        else:
            raise ValueError(f"item {i} must be a Dirichlet alpha > 0 or 'iid', got {v!r}")
    return out


def _check_shots(values: Any) -> Any:
    if not isinstance(values, list):
        return values
    out: list[int | None] = []
    for i, v in enumerate(values):
        if v is None or v == "all":
            out.append(None)
        elif isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            out.append(v)
        else:
            raise ValueError(f"item {i} must be examples per class >= 1 or 'all', got {v!r}")
    return out


Alphas = Annotated[list[float | None], BeforeValidator(_check_alphas)]
Shots = Annotated[list[int | None], BeforeValidator(_check_shots)]


class Sweep(_Strict):
    """One cross product; an axis left out takes the grid's top-level value."""

    name: str = Field(default="", description="What this sweep is for (shown in --dry-run).")
    families: list[Family] | None = Field(default=None, min_length=1)
    bases: list[Base] | None = Field(default=None, min_length=1)
    methods: list[MethodName] | None = Field(default=None, min_length=1)
    alphas: Alphas | None = Field(default=None, min_length=1)
    shots: Shots | None = Field(default=None, min_length=1)
    modes: list[Mode] | None = Field(default=None, min_length=1)


class Grid(_Strict):
    """A whole study; see presets/quick.yaml for a commented example."""

    name: str = Field(min_length=1, description="Name of the study.")
    description: str = ""
    dataset: str | None = Field(
        default="digits", description="'digits' (built in) or the path of an ImageFolder."
    )
    image_size: int = Field(default=32, ge=8, le=1024, description="Size of the digits images.")
    prompt_template: str | None = Field(default=None, description="CLIP class prompt.")
    test_fraction: float = Field(default=0.2, gt=0, lt=1, description="Held-out share.")
    organisations: int = Field(default=3, ge=1, le=1000, description="Organisations per cell.")
    rounds: int = Field(ge=1, le=100_000, description="Federated rounds.")
    local_epochs: int = Field(default=1, ge=1, le=1000, description="Local epochs per round.")
    seeds: list[int] = Field(default=[0], min_length=1, description="One cell per seed.")
    batch_size: int = Field(default=32, ge=1, le=65536)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(default=0.0, ge=0)
    lr: float = Field(default=1e-3, gt=0, le=10, description="Learning rate of every method.")
    models: dict[Family, ModelChoice] = Field(description="The base of each family.")
    method_settings: dict[MethodName, MethodSettings] = Field(default_factory=dict)
    families: list[Family] = Field(min_length=1)
    bases: list[Base] = Field(default=["pretrained", "random"], min_length=1)
    methods: list[MethodName] = Field(min_length=1)
    alphas: Alphas = Field(min_length=1, description="Dirichlet alphas; 'iid' for IID.")
    shots: Shots = Field(default=[None], min_length=1, description="Per class, or 'all'.")
    modes: list[Mode] = Field(default=["federated", "local"], min_length=1)
    sweeps: list[Sweep] = Field(default_factory=list, description="Union of cross products.")

    @field_validator("seeds")
    @classmethod
    def _seeds_non_negative(cls, seeds: list[int]) -> list[int]:
        if any(s < 0 for s in seeds):
            raise ValueError("seeds must be >= 0")
        return seeds

    def axes(self, sweep: Sweep | None = None) -> dict[str, list[Any]]:
        """The axes of one cross product: the sweep's where it has them, else the grid's."""
        out = {}
        for axis in AXES:
            own = getattr(sweep, axis) if sweep is not None else None
            out[axis] = own if own is not None else getattr(self, axis)
        return out

    def sweep_list(self) -> list[tuple[str, Sweep | None]]:
        """(field path, sweep) for each cross product of the grid."""
        if not self.sweeps:
            return [("", None)]
        return [(f"sweeps.{i}.", s) for i, s in enumerate(self.sweeps)]

    @model_validator(mode="after")
    def _consistent(self) -> Grid:
        for where, sweep in self.sweep_list():
            axes = self.axes(sweep)
            for fam in axes["families"]:
                if fam not in self.models:
                    raise ValueError(f"models.{fam}: missing, but {where}families lists {fam}")
                if "pretrained" in axes["bases"] and self.models[fam].pretrained is None:
                    raise ValueError(
                        f"models.{fam}.pretrained: null, but {where}bases lists pretrained "
                        "(name a base, or use bases: [random])"
                    )
            for method in axes["methods"]:
                info = METHODS[method]
                if not any(info.supports(f) for f in axes["families"]):
                    raise ValueError(
                        f"{where}methods: {method} is {' and '.join(sorted(info.families))} "
                        f"only, but {where}families has only {', '.join(axes['families'])}"
                    )
        return self


# pydantic's messages for unknown keys, empty lists and missing fields, said plainly
_PLAIN = {
    "extra_forbidden": "unknown field",
    "too_short": "must not be empty",
    "missing": "required field is missing",
}


def parse_grid(data: Any, source: str = "grid") -> Grid:
    """Validate a mapping into a grid; raises `GridError` with one line naming the field."""
    if not isinstance(data, dict):
        raise GridError(f"{source}: expected a mapping of fields (name, models, methods, ...)")
    try:
        return Grid.model_validate(data)
    except ValidationError as exc:
        message = format_validation_error(exc, plain=_PLAIN)
        raise GridError(f"{source}: {message.splitlines()[0]}") from None


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid YAML file."""
    return parse_grid(load_document(path, "grid", GridError), str(path))


def load_preset(name: str) -> Grid:
    """One of the grids shipped with FedTune (`quick`, `paper`)."""
    if name not in PRESETS:
        raise GridError(f"--preset: unknown preset {name!r} (known: {', '.join(PRESETS)})")
    text = resources.files("lab.study").joinpath("presets", f"{name}.yaml").read_text("utf-8")
    return parse_grid(yaml.safe_load(text), f"preset {name}")
