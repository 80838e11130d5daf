"""ViT through transformers, with a new linear head for the spec's classes.

The architecture comes from `model.arch`: a FedTune config name or a known HF
id shipped in `shared/model_configs/` (so it builds offline), a local
directory with a `config.json`, or an HF id resolved by transformers. Weights
come from `model.pretrained` through `ViTForImageClassification.from_pretrained`
with that same config, so the server and every client get identical shapes.

Whatever comes from the hub (config for an `arch` that is a model id, weights
for a `pretrained` model id) is downloaded at `model.revision` when the spec
pins one; a revision pins one repository, so `arch` and `pretrained` must then
name the same one (or `arch` a shipped config). Unpinned hub weights still
load, with a warning.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
from huggingface_hub.errors import RemoteEntryNotFoundError
from torch import nn
from transformers import ViTConfig, ViTForImageClassification, ViTModel

from shared.models.base import Preprocess, VisionClassifier, checked_preprocess, seeded
from shared.models.configs import hf_vit_config
from shared.models.synthetic import is_synthetic_tag, resolve_pretrained
from shared.spec import FederationSpec, ModelSpec

__all__ = ["ViTClassifier", "build_hf_vit"]

# ViTImageProcessor's defaults (IMAGENET_STANDARD_MEAN/STD, bilinear resize).
_DEFAULT_MEAN = (0.5, 0.5, 0.5)
_DEFAULT_STD = (0.5, 0.5, 0.5)
_PROCESSOR_CONFIG = "preprocessor_config.json"

log = logging.getLogger(__name__)


class ViTClassifier(VisionClassifier):
    """`ViTModel` and a linear head on the [CLS] token, as in ViTForImageClassification."""

    family = "hf_vit"
    backbone_name = "vit"
    head_name = "classifier"
    always_train_head = True
    # transformers/peft treat a module with `config` as a transformers model and
    # look this up when mapping weight names
    base_model_prefix = "vit"
    vit: Any
    classifier: nn.Linear

    def __init__(self, vit: ViTModel, classifier: nn.Linear, preprocess: Preprocess) -> None:
        super().__init__()
        self.vit = vit
        self.classifier = classifier
        self.preprocess = preprocess
        self.config = vit.config

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.vit(pixel_values=pixel_values).last_hidden_state
        return self.classifier(hidden[:, 0])

    def blocks(self) -> Sequence[nn.Module]:
        return list(self.vit.layers)

    def block_mlp(self, block: Any) -> nn.Module:
        return block.mlp

    def block_attention(self, block: Any) -> nn.Module:
        return block.attention

    def lora_targets(self, kind: str) -> list[str]:
        leaves = {"attn": ("attention.q_proj", "attention.v_proj"), "mlp": ("mlp.fc1", "mlp.fc2")}
        return [
            f"vit.layers.{i}.{leaf}" for i in range(len(self.vit.layers)) for leaf in leaves[kind]
        ]

    @property
    def width(self) -> int:
        return int(self.config.hidden_size)

    @property
    def patch_size(self) -> int:
        size = self.config.patch_size
        return int(size[0] if isinstance(size, list | tuple) else size)


def _is_dir(path: str | None) -> bool:
    return path is not None and Path(path).is_dir()


def _hub_sources(model: ModelSpec) -> tuple[str | None, str | None]:
    """(config repo, weights repo): the hub model ids the spec downloads, None where not."""
    arch, pretrained = model.arch, model.pretrained
    local_config = hf_vit_config(arch) is not None or _is_dir(arch) or _is_dir(pretrained)
    hub_weights = (
        pretrained is not None and not _is_dir(pretrained) and not is_synthetic_tag(pretrained)
    )
    return (None if local_config else arch), (pretrained if hub_weights else None)


def _checked_revision(model: ModelSpec) -> str | None:
    """`model.revision`, refused where it pins nothing or cannot pin everything downloaded."""
    if model.revision is None:
        return None
    repos = {repo for repo in _hub_sources(model) if repo is not None}
    if not repos:
        raise ValueError(
            f"model.revision: nothing in this spec is downloaded from the hub (model.arch "
            f"{model.arch!r}, model.pretrained {model.pretrained!r}); drop revision"
        )
    if len(repos) > 1:
        raise ValueError(
            f"model.revision: a revision pins one hub repository, but model.arch {model.arch!r} "
            f"and model.pretrained {model.pretrained!r} name two; use the same id for both"
        )
    return model.revision


@functools.cache
def _warn_unpinned(repo: str) -> None:
    log.warning(
        "model weights %r come from the hub unpinned (its current main); set model.revision "
        "to the repository's 40-hex commit id to pin them",
        repo,
    )


def resolve_config(spec: FederationSpec) -> ViTConfig:
    """The ViT architecture named by `model.arch`, with one output per class."""
    arch, pretrained = spec.model.arch, spec.model.pretrained
    revision = _checked_revision(spec.model)
    shipped = hf_vit_config(arch)
    try:
        if shipped is not None:
            config = ViTConfig(**{k: v for k, v in shipped.items() if k != "model_type"})
        elif _is_dir(arch):
            config = ViTConfig.from_pretrained(arch)
        elif pretrained is not None and _is_dir(pretrained):
            config = ViTConfig.from_pretrained(pretrained)
        else:
            # "main" is transformers' own default where the spec pins nothing
            config = ViTConfig.from_pretrained(arch, revision=revision or "main")
    except OSError as exc:
        raise ValueError(
            f"model.arch: cannot find a ViT config for {arch!r}{_at(revision)} "
            f"(not a FedTune config, local directory or reachable model id): {_first_line(exc)}"
        ) from None
    config.num_labels = len(spec.task.classes)
    return config


def _preprocess(
    model: ModelSpec, config: ViTConfig, weights: str | None, hub_revision: str | None
) -> Preprocess:
    """`model.preprocess`, else the base's own: the preprocessor_config.json of the weights
    loaded (local directory or hub model), or without weights of a local `pretrained`
    directory; ViTImageProcessor's defaults where there is none."""
    size = config.image_size
    size = int(size[0] if isinstance(size, list | tuple) else size)
    source = weights if weights is not None else model.pretrained
    if weights is None and not _is_dir(source):
        source = None
    data: dict[str, Any] = {}
    if model.preprocess is None and source is not None:
        data = _processor_config(source, hub_revision)
    mean = _per_channel(data.get("image_mean", _DEFAULT_MEAN))
    std = _per_channel(data.get("image_std", _DEFAULT_STD))
    label = f"model.pretrained: {_PROCESSOR_CONFIG} of {source!r}"
    return checked_preprocess(model.preprocess, size, mean, std, "bilinear", label)


def _processor_config(source: str, revision: str | None) -> dict[str, Any]:
    """The preprocessor_config.json of a local directory or hub model; {} where it has none."""
    try:
        if _is_dir(source):
            path = Path(source) / _PROCESSOR_CONFIG
            if not path.is_file():
                return {}
        else:
            hub = huggingface_hub.hf_hub_download(
                source, _PROCESSOR_CONFIG, revision=revision or "main"
            )
            path = Path(hub)
        data = json.loads(path.read_text(encoding="utf-8"))
    except RemoteEntryNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"model.pretrained: cannot read {_PROCESSOR_CONFIG} of {source!r}{_at(revision)}: "
            f"{_first_line(exc)}; state model.preprocess in the spec"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"model.pretrained: {_PROCESSOR_CONFIG} of {source!r} is not a mapping")
    return data


def _per_channel(value: Any) -> Any:
    """ViTImageProcessor takes one number for all three channels, or one per channel."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [value] * 3
    return value


def _load_pretrained(
    pretrained: str, config: ViTConfig, revision: str | None
) -> ViTForImageClassification:
    try:
        loaded: Any = ViTForImageClassification.from_pretrained(
            pretrained,
            config=config,
            revision=revision or "main",
            ignore_mismatched_sizes=True,
            output_loading_info=True,
        )
    except OSError as exc:
        raise ValueError(
            f"model.pretrained: cannot load {pretrained!r}{_at(revision)}: {_first_line(exc)}"
        ) from None
    model, info = loaded
    mismatched = [m[0] if isinstance(m, tuple) else m for m in info.get("mismatched_keys", [])]
    missing = list(info.get("missing_keys", [])) + mismatched
    backbone = sorted(k for k in missing if not str(k).startswith("classifier."))
    if backbone:
        raise ValueError(
            f"model.pretrained: {pretrained!r} does not fit model.arch {config.name_or_path or ''}"
            f" ({len(backbone)} backbone tensors missing or reshaped, e.g. {backbone[0]})"
        )
    return model


def build_hf_vit(
    spec: FederationSpec, *, load_weights: bool, device: torch.device
) -> ViTClassifier:
    """Build the ViT (weights from `model.pretrained` when loading) and its new seeded head."""
    hub_weights = _hub_sources(spec.model)[1]
    if load_weights and hub_weights is not None and spec.model.revision is None:
        _warn_unpinned(hub_weights)
    config = resolve_config(spec)
    pretrained = spec.model.pretrained
    weights = resolve_pretrained("hf_vit", spec.model.arch, pretrained) if load_weights else None
    if weights is not None:
        # only a hub download takes the revision (the spec refuses it for local weights)
        hf = _load_pretrained(weights, config, spec.model.revision if hub_weights else None)
    else:
        with device:
            hf = ViTForImageClassification(config)
    classifier = hf.classifier
    assert isinstance(classifier, nn.Linear)
    with seeded(spec.seed, "head"), torch.no_grad():
        nn.init.trunc_normal_(classifier.weight, std=config.initializer_range)
        nn.init.zeros_(classifier.bias)
    hub_revision = spec.model.revision if hub_weights else None
    preprocess = _preprocess(spec.model, config, weights, hub_revision)
    return ViTClassifier(hf.vit, classifier, preprocess)


def _at(revision: str | None) -> str:
    return f" at revision {revision}" if revision else ""


def _first_line(exc: BaseException) -> str:
    """transformers' errors run to several lines with hub hints; CLIs print one line."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
