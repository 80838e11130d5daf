"""Exported checkpoints load with the plain libraries and give FedTune's own logits.

One table of (family, method, options) runs through the same assertions: build
FedTune's model, give it a trained (randomly perturbed, so every LoRA product
and prompt is non-zero) state, export, load with `open_clip` /
`transformers` alone and compare logits on the same images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import ViTForImageClassification

from client_sdk import FederatedModel, UsageError, export_model, federated_model
from shared.models import build_family
from shared.spec import FederationSpec, load_spec
from shared.tuning import build

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ATOL = 1e-4

CLIP_CASES = [
    ("bias", {}, True),
    ("lora", {"r": 4, "alpha": 8, "targets": ["attn", "mlp"]}, True),
    ("lora", {"r": 2, "alpha": 4, "targets": ["attn"], "freeze_a": True}, False),
    ("head", {}, False),
    ("full", {}, False),
    ("text_prompt", {"n_ctx": 4}, False),
]
VIT_CASES = [
    ("bias", {}, True),
    ("lora", {"r": 4, "alpha": 8, "targets": ["attn", "mlp"]}, True),
    ("head", {}, False),
    ("full", {}, False),
]


def _spec(example: str, method: str, options: dict[str, Any], train_head: bool) -> FederationSpec:
    spec = load_spec(EXAMPLES / example)
    body = spec.method.model_dump() | {"name": method, "options": options}
    body["train_head"] = train_head
    return FederationSpec.model_validate(spec.model_dump() | {"method": body})


def _trained(spec: FederationSpec) -> FederatedModel:
    """The spec's model with every trainable tensor moved off its initial value."""
    built = build(spec)
    generator = torch.Generator().manual_seed(7)
    state = {
        name: t + 0.05 * torch.randn(t.shape, generator=generator)
        for name, t in built.trainable_state().items()
    }
    return federated_model(spec, state, built.base_state(), version="ab" * 32, round=2)


def _images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def _fedtune_logits(model: FederatedModel, x: torch.Tensor) -> torch.Tensor:
    return model.built.model.eval()(x)


@pytest.mark.parametrize(("method", "options", "train_head"), CLIP_CASES)
@torch.no_grad()
def test_open_clip_export_loads_with_open_clip_and_gives_fedtune_logits(
    tmp_path: Path, method: str, options: dict[str, Any], train_head: bool
) -> None:
    model = _trained(_spec("tiny-clip-bias.yaml", method, options, train_head))
    x = _images()

    export_model(model, tmp_path / "out", format="open_clip")

    clip = open_clip.create_model(
        "fedtune-tiny-clip", pretrained=str(tmp_path / "out" / "open_clip_model.safetensors")
    ).eval()
    head = load_file(tmp_path / "out" / "classifier.safetensors")
    logits = head["scale"] * F.normalize(clip.encode_image(x), dim=-1) @ head["classifier"].T
    torch.testing.assert_close(logits, _fedtune_logits(model, x), atol=ATOL, rtol=0)
    classes = json.loads((tmp_path / "out" / "classes.json").read_text())
    assert classes == model.classes


@torch.no_grad()
def test_open_clip_export_is_self_describing_for_local_dir_loading(tmp_path: Path) -> None:
    model = _trained(_spec("tiny-clip-bias.yaml", "bias", {}, True))
    x = _images()

    export_model(model, tmp_path / "out", format="open_clip")

    clip = open_clip.create_model(f"local-dir:{tmp_path / 'out'}").eval()
    head = load_file(tmp_path / "out" / "classifier.safetensors")
    logits = head["scale"] * F.normalize(clip.encode_image(x), dim=-1) @ head["classifier"].T
    torch.testing.assert_close(logits, _fedtune_logits(model, x), atol=ATOL, rtol=0)


def test_coop_export_carries_the_federation_text_tower(tmp_path: Path) -> None:
    model = _trained(_spec("tiny-clip-bias.yaml", "text_prompt", {"n_ctx": 4}, False))

    result = export_model(model, tmp_path / "out", format="open_clip")

    saved = load_file(tmp_path / "out" / "open_clip_model.safetensors")
    base = model.built.model.state_dict()
    assert torch.equal(saved["token_embedding.weight"], base["head.text.token_embedding.weight"])
    assert result.metadata["text_tower"] == "federation base"


@pytest.mark.parametrize(("method", "options", "train_head"), VIT_CASES)
@torch.no_grad()
def test_hf_export_loads_with_transformers_and_gives_fedtune_logits(
    tmp_path: Path, method: str, options: dict[str, Any], train_head: bool
) -> None:
    model = _trained(_spec("tiny-vit-lora.yaml", method, options, train_head))
    x = _images()

    export_model(model, tmp_path / "out", format="hf")

    hf = ViTForImageClassification.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(
        hf(pixel_values=x).logits, _fedtune_logits(model, x), atol=ATOL, rtol=0
    )
    assert hf.config.id2label == dict(enumerate(model.classes))


@pytest.mark.parametrize(
    ("example", "method", "options"),
    [
        ("tiny-clip-bias.yaml", "lora", {"targets": ["attn"]}),
        ("tiny-clip-bias.yaml", "text_prompt", {"n_ctx": 4}),
        ("tiny-vit-lora.yaml", "lora", {"r": 4, "alpha": 8, "targets": ["attn"]}),
    ],
)
@torch.no_grad()
def test_safetensors_export_loads_strictly_into_the_plain_family_model(
    tmp_path: Path, example: str, method: str, options: dict[str, Any]
) -> None:
    spec = _spec(example, method, options, method != "text_prompt")
    model = _trained(spec)
    x = _images()

    result = export_model(model, tmp_path / "out", format="safetensors")

    plain = build_family(spec, load_weights=False, device=torch.device("cpu"))
    plain.load_state_dict(load_file(tmp_path / "out" / "model.safetensors"), strict=True)
    torch.testing.assert_close(plain.eval()(x), _fedtune_logits(model, x), atol=ATOL, rtol=0)
    meta = json.loads((tmp_path / "out" / "fedtune_export.json").read_text())
    assert meta == result.metadata
    assert (meta["family"], meta["arch"], meta["method"]) == (
        spec.model.family,
        spec.model.arch,
        method,
    )
    assert (meta["classes"], meta["version"], meta["round"]) == (model.classes, "ab" * 32, 2)
    assert meta["base_fingerprint"] == model.built.base_fingerprint()


@pytest.mark.parametrize(
    ("example", "method", "options", "format"),
    [
        ("tiny-clip-bias.yaml", "adapter", {}, "open_clip"),
        ("tiny-clip-bias.yaml", "vpt", {"tokens": 2}, "safetensors"),
        ("tiny-vit-lora.yaml", "adapter", {"style": "houlsby"}, "hf"),
        ("tiny-vit-lora.yaml", "vpt", {"tokens": 2, "deep": True}, "safetensors"),
    ],
)
def test_methods_that_cannot_merge_are_refused_plainly_and_write_nothing(
    tmp_path: Path, example: str, method: str, options: dict[str, Any], format: Any
) -> None:
    model = _trained(_spec(example, method, options, example.startswith("tiny-vit")))

    with pytest.raises(UsageError) as refused:
        export_model(model, tmp_path / "out", format=format)

    message = str(refused.value)
    assert "\n" not in message
    assert f"method {method!r}" in message and "cannot be merged into plain weights" in message
    assert "methods that export: bias, full, head, lora, text_prompt" in message
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("example", "format", "fits"),
    [
        ("tiny-clip-bias.yaml", "hf", "open_clip, safetensors"),
        ("tiny-vit-lora.yaml", "open_clip", "hf, safetensors"),
    ],
)
def test_a_format_of_the_other_family_is_refused(
    tmp_path: Path, example: str, format: Any, fits: str
) -> None:
    model = _trained(_spec(example, "bias", {}, True))

    with pytest.raises(UsageError, match=f"formats for {model.spec.model.family}: {fits}$"):
        export_model(model, tmp_path / "out", format=format)

    assert not (tmp_path / "out").exists()


def test_a_non_empty_out_is_refused_unless_forced_then_replaced_whole(tmp_path: Path) -> None:
    model = _trained(_spec("tiny-vit-lora.yaml", "bias", {}, True))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    with pytest.raises(UsageError, match="is not empty; pass --force"):
        export_model(model, out, format="safetensors")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    result = export_model(model, out, format="safetensors", force=True)

    assert sorted(p.name for p in out.iterdir()) == sorted(result.files)
    assert result.files == ["fedtune_export.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging left behind


def test_an_empty_out_directory_is_used(tmp_path: Path) -> None:
    model = _trained(_spec("tiny-vit-lora.yaml", "head", {}, False))
    (tmp_path / "out").mkdir()

    result = export_model(model, tmp_path / "out", format="hf")

    assert "config.json" in result.files and "model.safetensors" in result.files


def test_the_cli_offers_exactly_the_export_formats() -> None:
    from client_sdk.cli import EXPORT_CHOICES
    from client_sdk.export import EXPORT_FORMATS

    assert EXPORT_CHOICES == EXPORT_FORMATS


def test_a_directory_without_a_saved_final_model_is_refused_by_name(tmp_path: Path) -> None:
    from client_sdk import saved_final_model

    (tmp_path / "spec.json").write_text("{}")

    with pytest.raises(UsageError, match=f"^{tmp_path} does not hold a saved final model: "):
        saved_final_model(tmp_path)
