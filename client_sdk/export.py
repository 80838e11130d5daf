"""Write a federated model as a standard checkpoint that its library loads on its own.

Formats (LoRA merged into the weights it adapts, CoOp prompts turned into the
class embeddings; see `shared.tuning.merge`):

- `hf` (hf_vit): a `save_pretrained` directory of `ViTForImageClassification`
  with the classes as `id2label`, plus the image processor's config.
- `open_clip` (open_clip): `open_clip_model.safetensors`, the whole CLIP state
  dict that `open_clip.create_model(arch, pretrained=FILE)` loads, and
  `classifier.safetensors` (`classifier` [classes, dim], `scale`) with
  `classes.json`, so `scale * normalize(model.encode_image(x)) @ classifier.T`
  are FedTune's logits. `open_clip_config.json` also lets
  `create_model("local-dir:DIR")` load it without the architecture registered.
- `safetensors` (either family): `model.safetensors`, the merged state dict of
  FedTune's plain family model (`shared.models.build_family`).

Every format also gets `fedtune_export.json`: family, arch, classes, method,
version, base fingerprint, preprocessing. FedTune keeps only CLIP's vision
tower and class embeddings; the open_clip checkpoint's text tower is the
federation's own where its base holds it (CoOp), else the spec's pretrained
one where it loads here, else the architecture's seeded initialisation (the
federation's own for a random-init base); `text_tower` in the JSON says which.
The directory is staged beside `out` and renamed into place: it appears whole
or not at all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel

from client_sdk._exceptions import UsageError
from shared.blobs import atomic_save_state, atomic_write_bytes, fsync_dir

if TYPE_CHECKING:  # the model libraries load on first use (see `client_sdk`)
    from client_sdk.inference import FederatedModel

__all__ = ["EXPORT_FORMATS", "ExportFormat", "ExportResult", "check_out", "export_model"]

log = logging.getLogger("client_sdk")

ExportFormat = Literal["open_clip", "hf", "safetensors"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("open_clip", "hf", "safetensors")
# The formats each family can be written in.
FAMILY_FORMATS: dict[str, tuple[ExportFormat, ...]] = {
    "open_clip": ("open_clip", "safetensors"),
    "hf_vit": ("hf", "safetensors"),
}
METADATA_FILE = "fedtune_export.json"


class ExportResult(BaseModel):
    """What `export_model` wrote."""

    out: Path
    format: ExportFormat
    files: list[str]
    metadata: dict[str, Any]


def export_model(
    model: FederatedModel, out: str | Path, *, format: ExportFormat, force: bool = False
) -> ExportResult:
    """Write `model` under `out` in `format`; a non-empty `out` is refused unless `force`."""
    from shared.tuning import NotMergeableError, mergeable_methods, plain_state

    spec = model.spec
    fits = FAMILY_FORMATS[spec.model.family]
    if format not in fits:
        raise UsageError(
            f"--format {format} does not fit a {spec.model.family} model; "
            f"formats for {spec.model.family}: {', '.join(fits)}"
        )
    try:
        plain = plain_state(model.built, spec.method.name)
    except NotMergeableError:
        raise UsageError(
            f"cannot export method {spec.method.name!r}: it adds modules that cannot be merged "
            f"into plain weights, so no {spec.model.family} format ({', '.join(fits)}) holds "
            f"it; methods that export: {', '.join(mergeable_methods())}; `evaluate` and "
            "`predict` use the model as it is"
        ) from None
    out = Path(out)
    check_out(out, force)
    meta = _metadata(model, format)
    writer = _WRITERS[format]
    with _staged(out) as stage:
        meta.update(writer(model, plain, stage))
        atomic_write_bytes(stage / METADATA_FILE, _json(meta))
        files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
    log.info("exported %s as %s to %s", spec.method.name, format, out)
    return ExportResult(out=out, format=format, files=files, metadata=meta)


def _metadata(model: FederatedModel, format: ExportFormat) -> dict[str, Any]:
    spec, pre = model.spec, model.built.preprocess
    return {
        "format": f"fedtune-export/1 {format}",
        "family": spec.model.family,
        "arch": spec.model.arch,
        "pretrained": spec.model.pretrained,
        "classes": list(spec.task.classes),
        "prompt_template": spec.task.prompt_template,
        "method": spec.method.name,
        "federation": model.federation_id,
        "version": model.version,
        "round": model.round,
        "base_fingerprint": model.built.base_fingerprint(),
        "preprocess": {
            "size": pre.size,
            "mean": list(pre.mean),
            "std": list(pre.std),
            "interpolation": pre.interpolation,
        },
    }


def _safetensors(
    model: FederatedModel, plain: dict[str, torch.Tensor], stage: Path
) -> dict[str, Any]:
    atomic_save_state(stage / "model.safetensors", plain, {"format": "pt"})
    return {}


def _hf(model: FederatedModel, plain: dict[str, torch.Tensor], stage: Path) -> dict[str, Any]:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor
    from transformers.utils import logging as hf_logging

    source: Any = model.built.model.config
    config = ViTConfig.from_dict(source.to_dict())
    config.id2label = dict(enumerate(model.classes))
    config.label2id = {name: i for i, name in enumerate(model.classes)}
    with torch.device("meta"):
        hf = ViTForImageClassification(config)
    hf.load_state_dict(plain, strict=True, assign=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        hf.save_pretrained(stage)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    pre = model.built.preprocess
    processor = ViTImageProcessor(
        do_resize=True,
        size={"height": pre.size, "width": pre.size},
        image_mean=list(pre.mean),
        image_std=list(pre.std),
    )
    processor.save_pretrained(stage)
    return {}


def _open_clip(
    model: FederatedModel, plain: dict[str, torch.Tensor], stage: Path
) -> dict[str, Any]:
    import open_clip

    spec = model.spec
    clip, text_source = _full_clip(model)
    state = {n: t.detach() for n, t in clip.state_dict().items()}
    visual = {n: t for n, t in plain.items() if n.startswith("visual.")}
    expected = {n for n in state if n.startswith("visual.")}
    if set(visual) != expected:
        odd = sorted(set(visual) ^ expected)
        raise UsageError(f"the vision tower does not fit open_clip's {spec.model.arch}: {odd[0]}")
    state.update(visual)
    state["logit_scale"] = plain["logit_scale"].reshape(state["logit_scale"].shape)
    clip.load_state_dict(state, strict=True)  # the checkpoint open_clip will load, checked here
    atomic_save_state(stage / "open_clip_model.safetensors", state, {"format": "pt"})
    classifier = {
        "classifier": plain["head.weight"],
        "scale": plain["logit_scale"].exp().reshape(()),
    }
    atomic_save_state(stage / "classifier.safetensors", classifier)
    atomic_write_bytes(stage / "classes.json", _json(model.classes))
    config = open_clip.get_model_config(spec.model.arch)
    if config is not None:
        pre = model.built.preprocess
        preprocess = {
            "mean": list(pre.mean),
            "std": list(pre.std),
            "interpolation": pre.interpolation,
        }
        body = {"model_cfg": config, "preprocess_cfg": preprocess}
        atomic_write_bytes(stage / "open_clip_config.json", _json(body))
    return {"text_tower": text_source}


def _full_clip(model: FederatedModel) -> tuple[Any, str]:
    """The whole open_clip CLIP of the spec's architecture and where its text tower came from."""
    import open_clip

    from shared.models import seeded
    from shared.models.open_clip_family import quiet_random_init
    from shared.models.synthetic import resolve_pretrained

    spec = model.spec
    arch = spec.model.arch
    adopted = {
        n.removeprefix("head.text."): t
        for n, t in model.built.model.state_dict().items()
        if n.startswith("head.text.")
    }
    if not adopted and spec.model.pretrained is not None:
        try:
            weights = resolve_pretrained("open_clip", arch, spec.model.pretrained)
            clip = open_clip.create_model(arch, pretrained=weights, weights_only=True)
            return clip, f"pretrained {spec.model.pretrained}"
        except (OSError, RuntimeError, ValueError) as exc:
            log.warning(
                "the pretrained text tower of %s does not load here (%s); the checkpoint's text "
                "tower is left at the architecture's initialisation",
                arch,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
    with seeded(spec.seed, "base"), quiet_random_init():
        clip = open_clip.create_model(arch, pretrained=None, load_weights=False)
    if adopted:
        missing = clip.load_state_dict(adopted, strict=False).unexpected_keys
        if missing:
            raise UsageError(f"the text tower does not fit open_clip's {arch}: {missing[0]}")
        return clip, "federation base"
    if spec.model.pretrained is None:
        return clip, "seeded random init (as the federation's base)"
    return clip, "seeded random init (the pretrained weights did not load here)"


_Writer = Callable[["FederatedModel", dict[str, torch.Tensor], Path], Mapping[str, Any]]
_WRITERS: dict[str, _Writer] = {"safetensors": _safetensors, "hf": _hf, "open_clip": _open_clip}


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode()


def check_out(out: Path, force: bool) -> None:
    """Refuse an `out` that is a file, or a non-empty directory without `force`."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; name a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"--out {out} is not empty; pass --force to replace it")


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A fresh directory beside `out`, renamed over it when the block succeeds."""
    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        yield stage
        os.chmod(stage, 0o755)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / "out")
        os.replace(stage, out)
        fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
