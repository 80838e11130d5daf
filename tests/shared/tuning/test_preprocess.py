"""`model.preprocess`: validated in the spec, and when stated, what every builder uses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import open_clip
import pytest

from shared.spec import FederationSpec, PreprocessSpec, SpecError, parse_spec
from shared.tuning import build
from tests.shared.tuning.checkpoints import IMAGENET, write_vit_checkpoint
from tests.shared.tuning.specs import tiny_spec

STATED = {"size": 32, "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "interpolation": "nearest"}


def _with_preprocess(spec: FederationSpec, preprocess: dict[str, Any]) -> FederationSpec:
    data = spec.model_dump(mode="json")
    data["model"]["preprocess"] = preprocess
    return parse_spec(data)


BAD_PREPROCESS = [
    ({**STATED, "size": 0}, r"^model\.preprocess\.size: Input should be greater than 0$"),
    ({**STATED, "size": -32}, r"^model\.preprocess\.size: Input should be greater than 0$"),
    ({**STATED, "size": 32.5}, r"^model\.preprocess\.size: Input should be a valid integer$"),
    ({**STATED, "size": True}, r"^model\.preprocess\.size: Input should be a valid integer$"),
    ({**STATED, "mean": [0.5, 0.5]}, r"^model\.preprocess\.mean: List should have at least 3"),
    ({**STATED, "mean": [0.5] * 4}, r"^model\.preprocess\.mean: List should have at most 3"),
    ({**STATED, "mean": 0.5}, r"^model\.preprocess\.mean: Input should be a valid list$"),
    ({**STATED, "mean": [0.5, "0.5", 0.5]}, r"^model\.preprocess\.mean\.1: .*valid number$"),
    ({**STATED, "mean": [float("nan")] * 3}, r"^model\.preprocess\.mean\.0: .*finite number"),
    ({**STATED, "std": [0.5, 0.0, 0.5]}, r"^model\.preprocess\.std\.1: .*greater than 0$"),
    ({**STATED, "std": [0.5, 0.5, -1]}, r"^model\.preprocess\.std\.2: .*greater than 0$"),
    ({**STATED, "std": [float("inf")] * 3}, r"^model\.preprocess\.std\.0: .*finite number"),
    ({**STATED, "std": [0.5]}, r"^model\.preprocess\.std: List should have at least 3"),
    ({**STATED, "interpolation": "lanczos"}, r"^model\.preprocess\.interpolation: Input should be"),
    ({**STATED, "resize_mode": "squash"}, r"^model\.preprocess\.resize_mode: Extra inputs"),
    ({k: v for k, v in STATED.items() if k != "std"}, r"^model\.preprocess\.std: Field required$"),
]


@pytest.mark.parametrize(("preprocess", "message"), BAD_PREPROCESS)
def test_a_bad_preprocess_is_refused_naming_the_field(preprocess: Any, message: str) -> None:
    with pytest.raises(SpecError, match=message) as caught:
        _with_preprocess(tiny_spec("hf_vit", "bias"), preprocess)

    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("family", ["open_clip", "hf_vit"])
def test_a_stated_preprocess_is_what_the_builder_uses(family: str) -> None:
    spec = _with_preprocess(tiny_spec(family, "bias"), STATED)

    built = build(spec)
    rebuilt = build(spec, base_state=built.base_state())

    expected = PreprocessSpec.model_validate(STATED)
    assert built.preprocess == rebuilt.preprocess == expected


def test_a_stated_preprocess_wins_over_the_checkpoint_s_own(tmp_path: Path) -> None:
    folder = write_vit_checkpoint(tmp_path / "vit", processor=IMAGENET)
    spec = _with_preprocess(tiny_spec("hf_vit", "bias", pretrained=str(folder)), STATED)

    preprocess = build(spec).preprocess

    assert (preprocess.mean, preprocess.std) == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])


@pytest.mark.parametrize("family", ["open_clip", "hf_vit"])
def test_a_stated_size_other_than_the_model_s_is_refused(family: str) -> None:
    spec = _with_preprocess(tiny_spec(family, "bias"), {**STATED, "size": 64})

    with pytest.raises(ValueError, match=r"^model\.preprocess\.size: .* 32-pixel .*, not 64$"):
        build(spec)


CHECKPOINT_PROCESSORS = [
    (IMAGENET, IMAGENET["image_mean"], IMAGENET["image_std"]),
    ({"image_mean": 0.25, "image_std": 0.75}, [0.25] * 3, [0.75] * 3),
    ({"do_resize": True}, [0.5] * 3, [0.5] * 3),
    (None, [0.5] * 3, [0.5] * 3),
]


@pytest.mark.parametrize(("processor", "mean", "std"), CHECKPOINT_PROCESSORS)
def test_a_vit_checkpoint_s_preprocessor_config_sets_the_normalisation(
    tmp_path: Path, processor: dict[str, Any] | None, mean: list[float], std: list[float]
) -> None:
    folder = write_vit_checkpoint(tmp_path / "vit", processor=processor)

    preprocess = build(tiny_spec("hf_vit", "bias", pretrained=str(folder))).preprocess

    assert (list(preprocess.mean), list(preprocess.std)) == (mean, std)


UNUSABLE_PROCESSORS = [
    ({"image_std": [0.5, 0.0, 0.5]}, r"\(std\.1: Input should be greater than 0\)"),
    ({"image_mean": [0.5, 0.5]}, r"\(mean: List should have at least 3 items"),
    ({"image_mean": "imagenet"}, r"\(mean: Input should be a valid list\)"),
]


@pytest.mark.parametrize(("processor", "message"), UNUSABLE_PROCESSORS)
def test_a_vit_checkpoint_with_unusable_preprocessing_is_refused(
    tmp_path: Path, processor: dict[str, Any], message: str
) -> None:
    folder = write_vit_checkpoint(tmp_path / "vit", processor=processor)

    with pytest.raises(ValueError, match=message) as caught:
        build(tiny_spec("hf_vit", "bias", pretrained=str(folder)))

    assert str(caught.value).startswith("model.pretrained: preprocessor_config.json of ")
    assert "state model.preprocess in the spec" in str(caught.value)


def test_a_vit_checkpoint_whose_preprocessor_config_is_not_json_is_refused(
    tmp_path: Path,
) -> None:
    folder = write_vit_checkpoint(tmp_path / "vit")
    (folder / "preprocessor_config.json").write_text("{not json", encoding="utf-8")

    with pytest.raises(ValueError, match=r"^model\.pretrained: cannot read preprocessor_config"):
        build(tiny_spec("hf_vit", "bias", pretrained=str(folder)))


def test_an_open_clip_folder_s_preprocessing_is_the_model_s(tmp_path: Path) -> None:
    config = {
        "model_cfg": open_clip.get_model_config("fedtune-tiny-clip"),
        "preprocess_cfg": {
            "mean": IMAGENET["image_mean"],
            "std": IMAGENET["image_std"],
            "interpolation": "random",  # open_clip's training-time choice: bicubic at eval
        },
    }
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config), encoding="utf-8")
    spec = tiny_spec("open_clip", "bias", arch=f"local-dir:{tmp_path}")

    preprocess = build(spec).preprocess

    expected = (IMAGENET["image_mean"], IMAGENET["image_std"], "bicubic")
    assert (list(preprocess.mean), list(preprocess.std), preprocess.interpolation) == expected
