"""Pretrained weights load through the libraries' own code from checkpoints the tests write.

open_clip: a safetensors state dict passed as `pretrained: <file>` to
`open_clip.create_model`; transformers: `save_pretrained(dir)` then
`pretrained: <dir>` through `from_pretrained`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import ViTConfig, ViTForImageClassification

from shared.models.configs import hf_vit_config
from shared.tuning import build, fingerprint
from tests.shared.tuning.specs import DIGITS, tiny_spec


def _write_clip_checkpoint(path: Path, seed: int) -> Any:
    torch.manual_seed(seed)
    clip = open_clip.create_model("fedtune-tiny-clip")
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    return clip


def _write_vit_checkpoint(directory: Path, seed: int) -> ViTForImageClassification:
    torch.manual_seed(seed)
    values = hf_vit_config("fedtune-tiny-vit")
    assert values is not None
    config = ViTConfig(**{k: v for k, v in values.items() if k != "model_type"})
    config.num_labels = 3
    model = ViTForImageClassification(config)
    model.save_pretrained(directory)
    return model


@torch.no_grad()
def _expected_clip_base(clip: Any, base_names: list[str]) -> str:
    """The fingerprint a bias-tuned classifier built from `clip` must have."""
    tokenizer = open_clip.get_tokenizer("fedtune-tiny-clip")
    prompts = [f"a photo of the digit {c}." for c in DIGITS]
    state = {f"visual.{k}": v for k, v in clip.visual.state_dict().items()}
    state["logit_scale"] = clip.logit_scale.detach().reshape(())
    text = copy.deepcopy(clip).double()  # the head is computed in float64, stored as float32
    state["head.weight"] = F.normalize(text.encode_text(tokenizer(prompts)), dim=-1).float()
    return fingerprint({n: state[n] for n in base_names})


def test_open_clip_loads_a_local_safetensors_checkpoint(tmp_path: Path) -> None:
    clip = _write_clip_checkpoint(tmp_path / "tiny.safetensors", seed=123)
    spec = tiny_spec("open_clip", "bias", pretrained=str(tmp_path / "tiny.safetensors"))

    bm = build(spec)

    assert bm.base_fingerprint() == _expected_clip_base(clip, list(bm.base_state()))
    for name, value in bm.trainable_state().items():
        assert torch.equal(value, clip.state_dict()[name])


def test_open_clip_checkpoints_with_other_weights_give_other_fingerprints(tmp_path: Path) -> None:
    _write_clip_checkpoint(tmp_path / "a.safetensors", seed=1)
    _write_clip_checkpoint(tmp_path / "b.safetensors", seed=2)
    a = build(tiny_spec("open_clip", "bias", pretrained=str(tmp_path / "a.safetensors")))
    b = build(tiny_spec("open_clip", "bias", pretrained=str(tmp_path / "b.safetensors")))
    random_init = build(tiny_spec("open_clip", "bias"))
    assert len({a.base_fingerprint(), b.base_fingerprint(), random_init.base_fingerprint()}) == 3


def test_hf_vit_loads_a_save_pretrained_directory(tmp_path: Path) -> None:
    saved = _write_vit_checkpoint(tmp_path / "vit", seed=123)
    spec = tiny_spec("hf_vit", "lora", {"r": 2}, pretrained=str(tmp_path / "vit"))

    bm = build(spec)

    # the backbone is the saved one; its 3-class head is replaced by a 10-class one
    state = saved.state_dict()
    base = bm.base_state()
    expected = {n: state[n.replace(".base_layer", "")] for n in base}
    assert bm.base_fingerprint() == fingerprint(expected)
    assert bm.manifest()["classifier.weight"].shape == [len(DIGITS), 96]
    assert bm.base_fingerprint() == build(spec).base_fingerprint()


def test_hf_vit_checkpoints_with_other_weights_give_other_fingerprints(tmp_path: Path) -> None:
    _write_vit_checkpoint(tmp_path / "a", seed=1)
    _write_vit_checkpoint(tmp_path / "b", seed=2)
    a = build(tiny_spec("hf_vit", "bias", pretrained=str(tmp_path / "a")))
    b = build(tiny_spec("hf_vit", "bias", pretrained=str(tmp_path / "b")))
    assert a.base_fingerprint() != b.base_fingerprint()


def test_hf_vit_checkpoint_of_another_shape_is_refused(tmp_path: Path) -> None:
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    ViTForImageClassification(config).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match=r"model\.pretrained"):
        build(tiny_spec("hf_vit", "bias", pretrained=str(tmp_path / "other")))


def test_open_clip_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model\.pretrained: .*missing\.safetensors"):
        build(tiny_spec("open_clip", "bias", pretrained=str(tmp_path / "missing.safetensors")))
