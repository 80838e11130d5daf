"""The federation spec: everything a client needs to build the same model.

One pydantic model, loaded from YAML or JSON, posted to the service and echoed
to every client. Validation happens here, at the boundary; the rest of FedTune
trusts a `FederationSpec` it is handed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from string import Formatter
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.families import Family
from shared.methods import METHODS, MethodName, MethodOptions
from shared.privacy import CentralPrivacySpec, LocalDPSpec, check_privacy
from shared.strategies import STRATEGY_OPTIONS, StrategyName, StrategyOptions
from shared.validation import format_validation_error, load_document

__all__ = [
    "DEFAULT_CLIP_NORM",
    "MAX_DURATION_S",
    "AggregationSpec",
    "FederationSpec",
    "LocalTrainingSpec",
    "MethodSpec",
    "ModelSpec",
    "PreprocessSpec",
    "RoundsSpec",
    "SecureAggregationSpec",
    "SpecError",
    "TaskSpec",
    "TransportSpec",
    "load_spec",
    "parse_spec",
]

TransportDtype = Literal["float32", "float16", "bfloat16"]
Interpolation = Literal["bicubic", "bilinear", "nearest"]

# aggregation.clip_norm when a spec leaves it out and tunes a lightweight method: honest
# lightweight deltas (prompts, adapters, LoRA factors, a few epochs) stay well inside it,
# and it bounds what any one update can move the global state by.
DEFAULT_CLIP_NORM = 10.0

# The longest a round or a secure-aggregation phase may stay open: a year (366 days) is past
# any real federation's patience, and keeps `now + duration` a date Python can represent.
MAX_DURATION_S = 366 * 24 * 3600


class _Strict(BaseModel):
    # NaN and infinity are refused: a stored spec is JSON, which writes both as null
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SpecError(ValueError):
    """A spec that cannot be used; the message names the field and what is wrong."""


# A hub commit id: branch and tag names move, short ids can become ambiguous.
_COMMIT_ID = re.compile(r"[0-9a-f]{40}")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz", ".npy")


def _names_local_weights(pretrained: str) -> bool:
    """Whether `pretrained` is a path (by its spelling, or because it exists here)."""
    return (
        pretrained.startswith(("/", "./", "../", "~"))
        or "\\" in pretrained
        or pretrained.lower().endswith(_CHECKPOINT_SUFFIXES)
        or Path(pretrained).exists()
    )


def _finite_options(options: dict[str, Any]) -> dict[str, Any]:
    """Refuse NaN and infinity anywhere in free-form options, naming the option."""

    def walk(value: Any, path: str) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{path} must be a finite number, not {value}")
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}.{key}" if path else str(key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")

    walk(options, "")
    return options


def _names_self_made_base(pretrained: str) -> bool:
    # imported here: shared.models imports this module (and torch); only a spec
    # with a revision pays for it
    from shared.models.synthetic import is_synthetic_tag

    return is_synthetic_tag(pretrained)


class PreprocessSpec(_Strict):
    """How images become the model's input: resize, centre-crop, normalise per channel."""

    size: int = Field(
        gt=0, strict=True, description="Side of the square input, in pixels (the model's own)."
    )
    mean: list[Annotated[float, Field(strict=True)]] = Field(
        min_length=3, max_length=3, description="Per-channel mean (R, G, B) of pixels in [0, 1]."
    )
    std: list[Annotated[float, Field(gt=0, strict=True)]] = Field(
        min_length=3, max_length=3, description="Per-channel standard deviation (R, G, B)."
    )
    interpolation: Interpolation = Field(description="Resize filter.")


class ModelSpec(_Strict):
    family: Family = Field(
        description="Model library: CLIP through open_clip, or ViT through transformers."
    )
    arch: str = Field(
        min_length=1,
        description="open_clip architecture name, HF model id or local dir, or a FedTune tiny config.",
    )
    pretrained: str | None = Field(
        default=None,
        description="open_clip tag, local checkpoint file or directory; null = seeded random init.",
    )
    base_source: Literal["server", "local"] = Field(
        default="server",
        description="server: clients download the frozen base from the aggregator; "
        "local: each client loads `pretrained` itself and the fingerprint is checked.",
    )
    revision: str | None = Field(
        default=None,
        description="Hub commit id (40 lowercase hex digits) that hub weights are downloaded at: "
        "an HF model id in `pretrained` (hf_vit) or an open_clip tag fetched from the HF hub. "
        "null = the repository's current main, unpinned (a warning is logged). Not for local "
        "files or FedTune's self-made bases.",
    )
    preprocess: PreprocessSpec | None = Field(
        default=None,
        description="Image preprocessing every machine applies. Left out, the service fills in "
        "the base's own (e.g. a checkpoint's preprocessor_config.json, an open_clip tag's) when "
        "the federation is created, so every client normalises as the service does.",
    )

    @field_validator("revision")
    @classmethod
    def _revision_is_commit_id(cls, revision: str | None) -> str | None:
        if revision is not None and not _COMMIT_ID.fullmatch(revision):
            raise ValueError(
                f"{revision!r} is not a hub commit id: give the full 40 lowercase hex digits "
                "(branch and tag names such as 'main' move; short or uppercase ids are refused)"
            )
        return revision

    @model_validator(mode="after")
    def _revision_pins_hub_weights(self) -> ModelSpec:
        """A revision only means something for weights downloaded from the hub."""
        if self.revision is None:
            return self
        if self.family == "open_clip" and self.arch.startswith("hf-hub:"):
            raise ValueError(
                "revision is not supported with an 'hf-hub:' arch (open_clip fetches its config "
                "and tokenizer unpinned); name a built-in arch and pretrained tag, or download "
                "the repository at that commit and use 'local-dir:'"
            )
        if self.pretrained is None:
            if self.family == "open_clip":
                raise ValueError(
                    "revision pins downloaded weights, but pretrained is null "
                    "(seeded random init downloads nothing)"
                )
            return self  # an hf_vit arch may be a hub id: the builder checks
        if _names_local_weights(self.pretrained):
            raise ValueError(
                f"revision pins hub weights, but pretrained {self.pretrained!r} is a local "
                "file or directory (drop revision: the base fingerprint pins local weights)"
            )
        if _names_self_made_base(self.pretrained):
            raise ValueError(
                f"revision pins hub weights, but pretrained {self.pretrained!r} is a FedTune "
                "self-made base (drop revision: its recipe and fingerprint pin it)"
            )
        return self


class TaskSpec(_Strict):
    classes: list[str] = Field(min_length=1, description="Class names, in label order.")
    prompt_template: str = Field(
        default="a photo of a {}.",
        description="CLIP only: the zero-shot head is built from these prompts.",
    )

    @field_validator("classes")
    @classmethod
    def _classes_unique(cls, classes: list[str]) -> list[str]:
        if any(not c.strip() for c in classes):
            raise ValueError("class names must not be empty")
        dupes = sorted({c for c in classes if classes.count(c) > 1})
        if dupes:
            raise ValueError(f"class names must be unique; repeated: {', '.join(dupes)}")
        return classes

    @field_validator("prompt_template")
    @classmethod
    def _template_has_one_slot(cls, template: str) -> str:
        """Prompts are `template.format(class_name)`: exactly one `{}` and no other field."""
        try:
            fields = [
                "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
                for _, name, spec, conv in Formatter().parse(template)
                if name is not None
            ]
        except ValueError as exc:
            raise ValueError(
                f"prompt_template is not a format string ({exc}); write a literal brace as "
                "'{{' or '}}'"
            ) from None
        if not fields:
            raise ValueError("prompt_template must contain '{}' where the class name goes")
        if fields != ["{}"]:
            raise ValueError(
                f"prompt_template must contain exactly one '{{}}', where the class name goes, "
                f"and no other field; it has {', '.join(fields)}"
            )
        return template


class MethodSpec(_Strict):
    name: MethodName = Field(description="Tuning method.")
    train_head: bool = Field(
        default=False, description="Also train the classifier head (hf_vit always trains it)."
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Method options, e.g. lora {r: 8, alpha: 16, targets: [attn]}, vpt {tokens: 10, deep: true}.",
    )

    @field_validator("options")
    @classmethod
    def _options_finite(cls, options: dict[str, Any]) -> dict[str, Any]:
        return _finite_options(options)

    def method_options(self, family: str) -> MethodOptions:
        """The options parsed into the method's own typed model (defaults filled in)."""
        return METHODS[self.name].check(family, self.train_head, self.options)


class LocalTrainingSpec(_Strict):
    epochs: int = Field(default=1, ge=1, le=1000, description="Local epochs per round.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Optional cap on optimiser steps per round."
    )
    batch_size: int = Field(default=32, ge=1, le=65536, description="Local mini-batch size.")
    optimizer: Literal["adamw", "sgd"] = Field(default="adamw", description="Local optimiser.")
    lr: float = Field(default=1e-3, gt=0, le=10, description="Local learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, description="Decoupled weight decay.")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum.")
    schedule: Literal["constant", "cosine"] = Field(
        default="constant",
        description="Learning-rate schedule over one round's local steps (epochs x batches, "
        "capped by max_steps), restarted every round with a fresh optimiser: constant holds lr "
        "after the warmup; cosine decays it from lr to 0 over the remaining steps.",
    )
    warmup_steps: int = Field(
        default=0,
        ge=0,
        description="Optimiser steps at the start of every round over which the learning rate "
        "rises linearly from 0 to lr (the first step runs at 0); 0 = no warmup.",
    )
    max_grad_norm: float | None = Field(
        default=None,
        gt=0,
        description="Clip the global L2 norm of the trainable tensors' gradients to this before "
        "each optimiser step; null = no clipping.",
    )
    dp: LocalDPSpec | None = Field(
        default=None,
        description="DP-SGD on every local step (per-example clipping and noise, Opacus); "
        "null = plain training.",
    )
    no_decay: Literal["biases_norms_prompts", "none"] = Field(
        default="biases_norms_prompts",
        description="Tensors exempt from weight_decay: biases_norms_prompts exempts biases, "
        "normalisation weights, prompt tokens, position and class embeddings and CLIP's "
        "zero-shot head; none decays every trainable tensor.",
    )

    @model_validator(mode="after")
    def _warmup_within_cap(self) -> LocalTrainingSpec:
        if self.max_steps is not None and self.warmup_steps >= self.max_steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be less than max_steps "
                f"({self.max_steps}), or the round never reaches lr"
            )
        if self.dp is not None and self.max_grad_norm is not None:
            raise ValueError(
                "max_grad_norm clips the batch gradient, dp.max_grad_norm every example's: "
                "with dp, leave local_training.max_grad_norm out"
            )
        return self


class RoundsSpec(_Strict):
    total: int = Field(default=50, ge=1, le=100_000, description="Number of rounds to run.")
    quorum: int = Field(default=3, ge=1, description="Updates that close a round at once.")
    min_updates: int = Field(
        default=2, ge=1, description="Updates that close a round when the deadline passes."
    )
    deadline_s: float = Field(
        default=3600,
        gt=0,
        le=MAX_DURATION_S,
        description="Seconds after a round opens before it may close on min_updates "
        "(at most a year).",
    )

    @model_validator(mode="after")
    def _quorum_covers_minimum(self) -> RoundsSpec:
        if self.quorum < self.min_updates:
            raise ValueError(
                f"quorum ({self.quorum}) must be at least min_updates ({self.min_updates})"
            )
        return self


class AggregationSpec(_Strict):
    strategy: StrategyName = Field(default="fedavg", description="Aggregation strategy.")
    weighting: Literal["num_examples", "uniform"] = Field(
        default="num_examples", description="How client deltas are weighted."
    )
    clip_norm: float | None = Field(
        default=None,
        gt=0,
        description="Per-update L2 norm bound applied before aggregation; when the field is "
        f"left out, {DEFAULT_CLIP_NORM} for every method but full; null = no bound.",
    )
    max_weight_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Largest share of the aggregate one update may weigh (the excess is spread "
        "over the others; with fewer than 1/share updates they weigh equally).",
    )
    max_abs_value: float | None = Field(
        default=1e4,
        gt=0,
        description="Uploads holding a value of larger magnitude are refused; null = no bound.",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Strategy options.")

    @field_validator("options")
    @classmethod
    def _options_finite(cls, options: dict[str, Any]) -> dict[str, Any]:
        return _finite_options(options)

    @model_validator(mode="after")
    def _options_fit_strategy(self) -> AggregationSpec:
        try:
            STRATEGY_OPTIONS[self.strategy].model_validate(self.options)
        except ValidationError as exc:
            raise ValueError(
                f"aggregation.options for {self.strategy}: {format_validation_error(exc)}"
            ) from None
        return self

    def strategy_options(self) -> StrategyOptions:
        """The options parsed into the strategy's own typed model (defaults filled in)."""
        return STRATEGY_OPTIONS[self.strategy].model_validate(self.options)


# Strategies that must see every single update: a masked update hides it (SecAgg).
SINGLE_UPDATE_STRATEGIES = frozenset({"median", "trimmed_mean", "krum", "multi_krum"})


class SecureAggregationSpec(_Strict):
    """Secure aggregation (SecAgg+, Bell et al. 2020, after Bonawitz et al. 2017): the service
    learns only the sum of the clients' deltas. Clipping (`aggregation.clip_norm`), the
    `max_abs_value` check and example weighting move to the clients, before masking;
    `max_weight_share` is not applied (the service never sees one update against the others;
    num_examples travels in the clear, bounded by the server's limit). The service can no
    longer refuse one poisoned update."""

    threshold: float | int = Field(
        default=0.6,
        gt=0,
        description="Shares needed to rebuild a client's secrets: a fraction in (0.5, 1] of its "
        "neighbours, or a count (at least a strict majority of them is always required).",
    )
    neighbours: int | None = Field(
        default=None,
        ge=2,
        description="Neighbours each client masks with and shares its secrets among (even; "
        "SecAgg+ graph); null = every other client (the original SecAgg).",
    )
    scale_bits: int = Field(
        default=24,
        ge=8,
        le=40,
        description="Fixed-point scale 2^scale_bits: each coordinate of the average is exact "
        "to 2^-(scale_bits+1).",
    )
    modulus_bits: int = Field(
        default=64,
        ge=32,
        le=64,
        description="Masked inputs are integers modulo 2^modulus_bits: int32 words at 32 (a "
        "masked input then weighs what a float32 delta does), int64 above. The weighted sum "
        "must fit, |weight x delta| x cohort < 2^(modulus_bits - 1 - scale_bits): at 32 lower "
        "scale_bits or weight uniformly.",
    )
    advertise_s: float = Field(
        default=600,
        gt=0,
        le=MAX_DURATION_S,
        description="Seconds the key advertisement stays open (at most a year).",
    )
    share_keys_s: float = Field(
        default=300,
        gt=0,
        le=MAX_DURATION_S,
        description="Seconds for the cohort to upload its encrypted shares (at most a year).",
    )
    masked_input_s: float = Field(
        default=3600,
        gt=0,
        le=MAX_DURATION_S,
        description="Seconds for the cohort to train and upload its masked inputs "
        "(at most a year).",
    )
    unmask_s: float = Field(
        default=300,
        gt=0,
        le=MAX_DURATION_S,
        description="Seconds for the survivors to send their unmasking shares (at most a year).",
    )

    def phase_s(self, phase: str) -> float:
        """The seconds phase `phase` ("advertise", "share", "input" or "unmask") stays open."""
        return {
            "advertise": self.advertise_s,
            "share": self.share_keys_s,
            "input": self.masked_input_s,
            "unmask": self.unmask_s,
        }[phase]

    @field_validator("threshold")
    @classmethod
    def _threshold_majority(cls, threshold: float | int) -> float | int:
        if isinstance(threshold, float) and not 0.5 < threshold <= 1:
            raise ValueError(
                "a fractional threshold must be in (0.5, 1]: with half or fewer of a client's "
                "neighbours the service could rebuild both of its secrets"
            )
        return threshold

    @field_validator("neighbours")
    @classmethod
    def _neighbours_even(cls, neighbours: int | None) -> int | None:
        if neighbours is not None and neighbours % 2:
            raise ValueError("neighbours must be even (a ring of k/2 neighbours on each side)")
        return neighbours


class TransportSpec(_Strict):
    dtype: TransportDtype = Field(default="float32", description="dtype of uploaded deltas.")


class FederationSpec(_Strict):
    """A federation: the model, the task, the method and how rounds run."""

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Human-readable federation name (letters, digits, . _ -).",
    )
    model: ModelSpec
    task: TaskSpec
    method: MethodSpec
    local_training: LocalTrainingSpec = Field(default_factory=LocalTrainingSpec)
    rounds: RoundsSpec = Field(default_factory=RoundsSpec)
    aggregation: AggregationSpec = Field(default_factory=AggregationSpec)
    transport: TransportSpec = Field(default_factory=TransportSpec)
    secure_aggregation: SecureAggregationSpec | None = Field(
        default=None,
        description="Secure aggregation (SecAgg+): null = off, the service sees every update.",
    )
    seed: int = Field(default=0, ge=0, description="Seed for every random initialisation.")
    privacy: CentralPrivacySpec | None = Field(
        default=None, description="Central differential privacy at the service; null = none."
    )

    @model_validator(mode="before")
    @classmethod
    def _default_clip_norm(cls, data: Any) -> Any:
        """Lightweight methods get `DEFAULT_CLIP_NORM` unless the spec sets clip_norm (even null);
        with `privacy`, every method gets privacy.clip_norm."""
        if not isinstance(data, dict):
            return data
        method, aggregation = data.get("method"), data.get("aggregation", {})
        name = method.get("name") if isinstance(method, dict) else getattr(method, "name", None)
        privacy = data.get("privacy")
        clip = privacy.get("clip_norm") if isinstance(privacy, dict) else None
        clip = getattr(privacy, "clip_norm", clip)
        if isinstance(clip, bool) or not isinstance(clip, int | float) or not clip > 0:
            clip = None  # not a bound: privacy.clip_norm's own check says so
        if name is None or (name == "full" and clip is None):
            return data
        if isinstance(aggregation, AggregationSpec):
            if "clip_norm" in aggregation.model_fields_set:
                return data
            aggregation = aggregation.model_dump(exclude_unset=True)
        if isinstance(aggregation, dict) and "clip_norm" not in aggregation:
            default = DEFAULT_CLIP_NORM if clip is None else clip
            return {**data, "aggregation": {**aggregation, "clip_norm": default}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _private_weighting(cls, data: Any) -> Any:
        """With `privacy`, aggregation.weighting defaults to uniform (the private mean's)."""
        if not isinstance(data, dict) or data.get("privacy") is None:
            return data
        aggregation = data.get("aggregation", {})
        if isinstance(aggregation, AggregationSpec):
            aggregation = aggregation.model_dump(exclude_unset=True)
        if isinstance(aggregation, dict) and "weighting" not in aggregation:
            return {**data, "aggregation": {**aggregation, "weighting": "uniform"}}
        return data

    @model_validator(mode="after")
    def _method_fits_model(self) -> FederationSpec:
        self.method.method_options(self.model.family)
        if self.model.base_source == "local" and self.model.pretrained is None:
            raise ValueError(
                "model.base_source: local needs model.pretrained (clients load it themselves)"
            )
        check_privacy(self)
        return self

    @model_validator(mode="after")
    def _secure_aggregation_fits(self) -> FederationSpec:
        """Refuse what cannot work when the service sees only the masked sum."""
        if self.secure_aggregation is None:
            return self
        agg = self.aggregation
        if agg.strategy in SINGLE_UPDATE_STRATEGIES:
            raise ValueError(
                f"aggregation.strategy: {agg.strategy} must see single updates, which secure "
                "aggregation hides; use fedavg or a server optimiser (fedavgm, fedadam, ...)"
            )
        if self.rounds.min_updates < 2:
            raise ValueError(
                "rounds.min_updates must be at least 2 with secure_aggregation "
                "(the sum of one update is that update)"
            )
        return self

    @model_validator(mode="after")
    def _rounds_fit_strategy(self) -> FederationSpec:
        """Checked after privacy and secure aggregation, which may refuse the strategy outright."""
        self.aggregation.strategy_options().check_min_updates(
            self.aggregation.strategy, self.rounds.min_updates
        )
        return self


def parse_spec(data: Any) -> FederationSpec:
    """Validate a mapping into a spec, raising `SpecError` with a readable message."""
    if not isinstance(data, dict):
        raise SpecError("spec: expected a mapping of fields (name, model, task, method, ...)")
    try:
        return FederationSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc)) from None


def load_spec(path: str | Path) -> FederationSpec:
    """Load a spec from a YAML or JSON file."""
    return parse_spec(load_document(path, "spec", SpecError))
