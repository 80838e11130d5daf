"""CLIP through open_clip, as an image classifier with a zero-shot head.

The head is CLIP's zero-shot classifier: the normalised text embedding of
`prompt_template.format(class)` for every class; logits are CLIP's logit scale
times the cosine of the normalised image features with each row. Only the
vision tower and that head stay in the model: the text tower is not needed to
classify, so it is not part of the base the clients download, unless a method
(CoOp text prompts) adopts it through `ClipClassifier.text_tower()`.

A pretrained tag whose weights open_clip fetches from the HF hub is pinned by
`model.revision`: FedTune downloads the tag's file at that commit itself
(safetensors first, as open_clip does) and hands open_clip the local file,
with the tag's preprocessing. open_clip reads safetensors with safetensors and
anything else with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, get_args

import huggingface_hub
import open_clip
import torch
import torch.nn.functional as F
from huggingface_hub.errors import RemoteEntryNotFoundError
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from torch import nn

from shared.models.base import Preprocess, TextTower, VisionClassifier, checked_preprocess
from shared.models.configs import register_open_clip_configs
from shared.models.synthetic import resolve_pretrained
from shared.spec import FederationSpec, Interpolation, ModelSpec, PreprocessSpec

__all__ = [
    "ClipClassifier",
    "FixedHead",
    "OpenClipTextTower",
    "build_open_clip",
    "quiet_random_init",
]

register_open_clip_configs()

log = logging.getLogger(__name__)

_RESIZE_FILTERS: tuple[Interpolation, ...] = get_args(Interpolation)


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def quiet_random_init(active: bool = True) -> Iterator[None]:
    """Silence open_clip's "initialized randomly" warning where that is intended.

    With `load_weights=False` the caller loads a base into the model afterwards,
    so the warning (logged on the root logger) would only mislead.
    """
    if not active:
        yield
        return
    quiet = _DropRandomInitWarning()
    logging.getLogger().addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(quiet)


class FixedHead(nn.Module):
    """Class embeddings as a plain parameter [classes, dim]."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self) -> torch.Tensor:
        return self.weight


class OpenClipTextTower(TextTower):
    """The parts of an open_clip text transformer, runnable on token embeddings.

    Holds the same modules open_clip uses in `encode_text`, so CoOp can feed
    learned context vectors in place of some token embeddings.
    """

    def __init__(self, src: Any, tokenizer: Callable[[list[str]], torch.Tensor]) -> None:
        super().__init__()
        if getattr(src, "cls_emb", None) is not None or not hasattr(src, "token_embedding"):
            raise ValueError(
                "the text tower must be a CLIP-style text transformer (not an HF text tower)"
            )
        self.token_embedding = src.token_embedding
        self.positional_embedding = src.positional_embedding
        self.transformer = src.transformer
        self.ln_final = src.ln_final
        self.text_projection = src.text_projection
        self.register_buffer("attn_mask", src.attn_mask, persistent=False)
        self.pool_type = getattr(src, "text_pool_type", getattr(src, "pool_type", "argmax"))
        self.eos_id = getattr(src, "text_eos_id", getattr(src, "eos_id", None))
        self.tokenizer = tokenizer

    @property
    def context_length(self) -> int:
        return int(self.positional_embedding.shape[0])

    @property
    def width(self) -> int:
        return int(self.token_embedding.weight.shape[1])

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.positional_embedding.device)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(tokens)

    token_embedding: Any
    positional_embedding: Any
    transformer: Any
    ln_final: Any
    text_projection: Any
    attn_mask: Any

    def encode(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x = embeddings + self.positional_embedding.to(embeddings.dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        x = open_clip.transformer.text_global_pool(x, tokens, self.pool_type, self.eos_id)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        if self.text_projection is not None:
            return x @ self.text_projection
        return x


class ClipClassifier(VisionClassifier):
    family = "open_clip"
    backbone_name = "visual"
    head_name = "head"
    visual: Any
    head: Any
    logit_scale: torch.Tensor

    def __init__(
        self,
        visual: nn.Module,
        head: nn.Module,
        logit_scale: torch.Tensor,
        preprocess: Preprocess,
        text_tower: Callable[[], TextTower] | None = None,
        prompt_template: str = "{}",
        class_names: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.prompt_template = prompt_template
        self.class_names = list(class_names)
        self.visual = visual
        self.head = head
        self.register_buffer("logit_scale", logit_scale.detach().clone())
        self.preprocess = preprocess
        # makes the tower from the whole CLIP model, held here unregistered: it
        # is no part of the state unless a method adopts the tower it makes
        self._make_text_tower = text_tower

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = F.normalize(self.visual(pixel_values), dim=-1)
        classes = self.head()
        return self.logit_scale.exp() * features @ classes.t()

    def blocks(self) -> Sequence[nn.Module]:
        transformer = getattr(self.visual, "transformer", None)
        blocks = getattr(transformer, "resblocks", None)
        if blocks is None or not getattr(transformer, "batch_first", False):
            raise ValueError(
                "this method needs an open_clip ViT vision tower "
                f"(got {type(self.visual).__name__})"
            )
        return list(blocks)

    def block_mlp(self, block: Any) -> nn.Module:
        return block.mlp

    def block_attention(self, block: Any) -> nn.Module:
        return block.attn

    def token_entry(self) -> nn.Module:
        self.blocks()  # a ViT tower, or the error that says it is not one
        return self.visual.ln_pre

    def lora_targets(self, kind: str) -> list[str]:
        names = []
        blocks: list[Any] = list(self.blocks())
        for i, block in enumerate(blocks):
            prefix = f"visual.transformer.resblocks.{i}"
            if kind == "attn" and isinstance(block.attn, nn.MultiheadAttention):
                names.append(f"{prefix}.attn")
            elif kind == "mlp":
                names += [f"{prefix}.mlp.c_fc", f"{prefix}.mlp.c_proj"]
            else:
                raise ValueError(f"LoRA cannot wrap {type(block.attn).__name__} attention")
        return names

    @property
    def width(self) -> int:
        return int(self.visual.class_embedding.shape[-1])

    @property
    def patch_size(self) -> int:
        return int(self.visual.patch_size[0])

    def text_tower(self) -> TextTower:
        if self._make_text_tower is None:
            raise ValueError("this CLIP classifier holds no text tower (released after build)")
        return self._make_text_tower()

    def release_text_tower(self) -> None:
        self._make_text_tower = None


def _preprocess_override(arch: str, tag: str | None) -> dict[str, Any] | None:
    """The preprocessing a pretrained tag implies, without fetching its weights."""
    if not tag:
        return None
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    keys = ("mean", "std", "interpolation", "resize_mode")
    return {k: cfg[k] for k in keys if k in cfg} or None


def _stated_override(stated: PreprocessSpec) -> dict[str, Any]:
    """`model.preprocess` as open_clip's preprocessing (the size is the tower's own)."""
    return {
        "mean": tuple(stated.mean),
        "std": tuple(stated.std),
        "interpolation": stated.interpolation,
    }


def _preprocess(clip: Any, model: ModelSpec) -> Preprocess:
    cfg = open_clip.get_model_preprocess_cfg(clip)
    size = cfg.get("size", 224)
    size = size[0] if isinstance(size, list | tuple) else size
    interpolation = str(cfg.get("interpolation", "bicubic"))
    if interpolation not in _RESIZE_FILTERS:
        interpolation = "bicubic"  # open_clip's own eval transform does the same ("random")
    source = f"model.pretrained: {model.pretrained}" if model.pretrained else "model.arch"
    return checked_preprocess(
        model.preprocess, int(size), cfg.get("mean"), cfg.get("std"), interpolation, source
    )


def _hub_file(arch: str, tag: str | None) -> str | None:
    """The tag's `hf_hub` entry ('org/repo/filename', filename may be empty), if it has one."""
    if not tag or ":" in arch:
        return None
    hub = open_clip.get_pretrained_cfg(arch.replace("/", "-"), tag).get("hf_hub", "")
    return str(hub) or None


def _candidates(filename: str) -> list[str]:
    """The safetensors twin first, as open_clip's own hub download does."""
    if filename == HF_WEIGHTS_NAME:
        return [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def _download_pinned(hub: str, revision: str) -> str:
    """Download a tag's weights file at `revision`; returns the local path."""
    repo_id, filename = os.path.split(hub)
    names = _candidates(filename or HF_WEIGHTS_NAME)
    for name in names:
        try:
            path = huggingface_hub.hf_hub_download(
                repo_id,
                name,
                revision=revision,
                library_name="open_clip",
                library_version=open_clip.__version__,
            )
        except RemoteEntryNotFoundError:
            continue  # the repository has no such file at that commit: try the next
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"model.revision: cannot download {name} of {repo_id} at revision {revision}: "
                f"{_first_line(exc)}"
            ) from None
        return str(path)
    raise ValueError(
        f"model.revision: {repo_id} at revision {revision} holds none of {', '.join(names)}"
    )


def _pinned_weights(arch: str, tag: str | None, revision: str | None) -> str | None:
    """The local file of the tag's hub weights at `revision`; None where open_clip loads as is."""
    hub = _hub_file(arch, tag)
    if revision is not None and hub is None:
        raise ValueError(
            f"model.revision: open_clip does not fetch {tag!r} of {arch!r} from the HF hub, "
            "so a revision pins nothing; drop revision"
        )
    if hub is None:
        if arch.startswith("hf-hub:"):
            _warn_unpinned(arch, "download the repository at a commit and use 'local-dir:'")
        return None
    if revision is None:
        _warn_unpinned(f"{arch}/{tag}", "set model.revision to the hub commit id to pin them")
        return None
    return _download_pinned(hub, revision)


@functools.cache
def _warn_unpinned(what: str, remedy: str) -> None:
    log.warning("model weights %s come from the hub unpinned (its current main); %s", what, remedy)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@torch.no_grad()
def _zero_shot_head(clip: Any, tokenizer: Any, spec: FederationSpec) -> torch.Tensor:
    """The class embeddings of the prompts, float32. The head is part of the frozen base, so
    with `base_source: local` every client must compute the same bits as the service: the
    text tower runs in float64, where a different summation order (thread count, CPU kernels,
    GPU) stays far below float32's rounding."""
    prompts = [spec.task.prompt_template.format(c) for c in spec.task.classes]
    first = next(clip.parameters())
    tokens = tokenizer(prompts).to(first.device)
    dtype = first.dtype
    clip.double()
    try:
        return F.normalize(clip.encode_text(tokens), dim=-1).float()
    finally:
        clip.to(dtype)  # every float dtype round-trips through float64 exactly


def build_open_clip(
    spec: FederationSpec, *, load_weights: bool, device: torch.device
) -> ClipClassifier:
    """Create the CLIP model with open_clip's own factory and wrap it as a classifier.

    `load_weights=False` builds the architecture only (seeded random init):
    no file or network access, the caller loads a base afterwards.
    """
    arch, pretrained = spec.model.arch, spec.model.pretrained
    if ":" not in arch and open_clip.get_model_config(arch) is None:
        raise ValueError(
            f"model.arch: {arch!r} is not an open_clip architecture "
            "(see open_clip.list_models(), or use hf-hub:/local-dir:)"
        )
    weights = resolve_pretrained("open_clip", arch, pretrained) if load_weights else None
    pinned = _pinned_weights(arch, pretrained, spec.model.revision) if load_weights else None
    if spec.model.preprocess is not None:
        override = _stated_override(spec.model.preprocess)
    elif load_weights and pinned is None:
        override = None
    else:  # a tag's preprocessing, where open_clip is not handed the tag itself
        override = _preprocess_override(arch, pretrained)
    try:
        with quiet_random_init(not load_weights):
            clip = open_clip.create_model(
                arch,
                pretrained=pinned or weights,
                load_weights=load_weights,
                device=device,
                force_preprocess_cfg=override,
                weights_only=True,
            )
    except RuntimeError as exc:
        raise ValueError(
            f"model.pretrained: open_clip cannot load {pretrained!r} for {arch!r}: {exc}"
        ) from None
    tokenizer = open_clip.get_tokenizer(arch)
    head = FixedHead(_zero_shot_head(clip, tokenizer, spec))
    return ClipClassifier(
        clip.visual,
        head,
        clip.logit_scale.detach().reshape(()),
        _preprocess(clip, spec.model),
        text_tower=functools.partial(OpenClipTextTower, clip, tokenizer),
        prompt_template=spec.task.prompt_template,
        class_names=spec.task.classes,
    )
