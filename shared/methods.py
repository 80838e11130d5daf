"""The tuning methods a spec may name: each one's options, model families and head rule.

Declared here once and light (pydantic only), so that the spec, the OpenAPI
document, the CLIs and the lab validate and list methods without importing
torch. The implementations, one module each under `shared/tuning/`, register
their `apply` against these names. Adding a method: declare it here, write
its module there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.families import FAMILY_NAMES, Family
from shared.validation import OneOf, format_validation_error

__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "AdapterOptions",
    "AdapterStyle",
    "ClassPosition",
    "LoraOptions",
    "MethodInfo",
    "MethodName",
    "MethodOptions",
    "NoOptions",
    "TextPromptOptions",
    "VptOptions",
    "method_names",
]


class MethodOptions(BaseModel):
    """Base of method options: strict, frozen, every field described."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoOptions(MethodOptions):
    pass


AdapterStyle = Literal["parallel", "houlsby", "pfeiffer"]


class AdapterOptions(MethodOptions):
    style: AdapterStyle = Field(
        default="parallel",
        description="parallel: AdaptFormer, beside each MLP; houlsby: after attention and after "
        "the MLP; pfeiffer: after the MLP only.",
    )
    dim: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Bottleneck width; default parallel 8, houlsby 64, pfeiffer width / 16.",
    )
    scale: float | None = Field(
        default=None,
        gt=0,
        description="Multiplier of the adapter's output; default parallel 0.1, others 1.",
    )
    dropout: float = Field(
        default=0.0, ge=0, lt=1, description="Dropout inside the bottleneck (AdaptFormer: 0.1)."
    )


LoraTarget = Literal["attn", "mlp"]


def _attn_only() -> list[LoraTarget]:
    return ["attn"]


class LoraOptions(MethodOptions):
    r: int = Field(default=8, ge=1, le=4096, description="Rank of the low-rank update.")
    alpha: float = Field(
        default=16, gt=0, description="Scaling numerator: update is (alpha / r) B A x."
    )
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    targets: list[LoraTarget] = Field(
        default_factory=_attn_only,
        min_length=1,
        description="attn: query and value projections; mlp: both MLP linears.",
    )
    freeze_a: bool = Field(
        default=False,
        description="Freeze A at its seeded init and train B only (FFA-LoRA): "
        "FedAvg of the update B A is then exact.",
    )

    @field_validator("targets")
    @classmethod
    def _unique(cls, targets: list[str]) -> list[str]:
        if len(set(targets)) != len(targets):
            raise ValueError("targets must not repeat")
        return targets


ClassPosition = Literal["end", "middle", "front"]


class TextPromptOptions(MethodOptions):
    n_ctx: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Learnable context vectors; default 16, or the token count of `init`.",
    )
    class_position: ClassPosition = Field(
        default="end",
        description="Where the class name goes: after the context (end), between its halves "
        "(middle) or before it (front).",
    )
    class_specific: bool = Field(
        default=False, description="One context per class (CoOp's CSC) instead of one shared."
    )
    init: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="A phrase (CoOp: 'a photo of a') whose token embeddings start the context.",
    )


class VptOptions(MethodOptions):
    tokens: int = Field(default=10, ge=1, le=1024, description="Prompt tokens per block.")
    deep: bool = Field(default=True, description="New prompts at every block (VPT-deep).")


@dataclass(frozen=True)
class MethodInfo:
    """What a spec may ask of one method; `check` is the only place these rules are applied."""

    name: str
    options: type[MethodOptions] = NoOptions
    families: frozenset[Family] = frozenset(FAMILY_NAMES)
    # False when the method itself produces the head (train_head would be meaningless)
    accepts_train_head: bool = True
    # option -> the values `fedtune-server methods` reports a row for (beside the spec's own)
    variants: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def supports(self, family: str) -> bool:
        return family in self.families

    def check(self, family: str, train_head: bool, options: Mapping[str, Any]) -> MethodOptions:
        """The options parsed into the method's model; ValueError naming the field otherwise."""
        if not self.supports(family):
            supported = ", ".join(sorted(self.families))
            raise ValueError(
                f"method.name: {self.name} supports model.family {supported}, not {family}"
            )
        if train_head and not self.accepts_train_head:
            raise ValueError(
                f"method.train_head: {self.name} produces the classifier itself; set it to false"
            )
        try:
            return self.options.model_validate(dict(options))
        except ValidationError as exc:
            fields = "; ".join(
                f"method.options.{part}" for part in format_validation_error(exc).split("; ")
            )
            raise ValueError(f"{fields} (method {self.name})") from None


# name -> declaration, in the order tables and documents list them
METHODS: Mapping[str, MethodInfo] = MappingProxyType(
    {
        m.name: m
        for m in (
            MethodInfo("full"),
            MethodInfo("head"),
            MethodInfo("bias"),
            MethodInfo("lora", options=LoraOptions, variants=(("freeze_a", (False, True)),)),
            MethodInfo(
                "adapter",
                options=AdapterOptions,
                variants=(("style", ("parallel", "houlsby", "pfeiffer")),),
            ),
            MethodInfo("vpt", options=VptOptions),
            MethodInfo(
                "text_prompt",
                options=TextPromptOptions,
                families=frozenset({"open_clip"}),
                accepts_train_head=False,
            ),
        )
    }
)
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
MethodName = Annotated[str, OneOf(METHOD_NAMES)]


def method_names(family: str | None = None) -> list[str]:
    """Declared method names (those supporting `family` when given), in declaration order."""
    return [n for n, m in METHODS.items() if family is None or m.supports(family)]
