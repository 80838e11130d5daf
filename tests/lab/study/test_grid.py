"""Grid files: the presets parse, and every bad grid is one line that names the field."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from lab.study.cells import expand
from lab.study.grid import GridError, load_grid, load_preset, parse_grid

BASE: dict[str, Any] = {
    "name": "g",
    "rounds": 2,
    "models": {
        "open_clip": {"arch": "fedtune-synth-clip", "pretrained": "fedtune-synth-v1"},
        "hf_vit": {"arch": "fedtune-tiny-vit", "pretrained": "fedtune-synth-v1"},
    },
    "families": ["open_clip", "hf_vit"],
    "methods": ["bias"],
    "alphas": [0.1],
}


def with_(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


@pytest.mark.parametrize("name", ["quick", "paper"])
def test_presets_parse_and_cover_all_seven_methods_both_families_and_bases(name):
    grid = load_preset(name)
    cells = expand(grid)

    assert {c.method for c in cells} == {
        "full", "head", "bias", "lora", "adapter", "vpt", "text_prompt",
    }  # fmt: skip
    assert {c.family for c in cells} == {"open_clip", "hf_vit"}
    assert {c.base for c in cells} == {"pretrained", "random"}
    assert {c.mode for c in cells} == {"federated", "local"}
    assert not [c for c in cells if c.method == "text_prompt" and c.family == "hf_vit"]


def test_quick_preset_has_every_comparison_the_findings_need():
    cells = expand(load_preset("quick"))
    combos = {(c.family, c.method) for c in cells}

    assert len(combos) == 13
    for family, method in combos:
        at = [c for c in cells if (c.family, c.method) == (family, method) and c.alpha == 0.1]
        assert {(c.base, c.mode) for c in at} >= {
            ("pretrained", "federated"), ("random", "federated"),
            ("pretrained", "local"), ("random", "local"),
        }  # fmt: skip
    for family in ("open_clip", "hf_vit"):
        for method in ("bias", "lora"):
            mine = [
                c for c in cells if (c.family, c.method, c.base) == (family, method, "pretrained")
            ]
            assert {c.alpha for c in mine} == {0.1, 1.0}
            assert len({c.shots for c in mine}) == 2


def test_top_level_axes_make_one_cross_product_without_text_prompt_on_vit():
    grid = parse_grid(with_(methods=["bias", "text_prompt"], alphas=[0.1, "iid"], shots=[4, "all"]))

    cells = expand(grid)

    # 2 alphas x 2 shots x (bias on 2 families + text_prompt on CLIP) x 2 bases x 2 modes
    assert len(cells) == 2 * 2 * 3 * 2 * 2
    assert {c.alpha for c in cells} == {0.1, None}
    assert {c.shots for c in cells} == {4, None}


def test_sweeps_override_top_level_axes_and_overlapping_cells_appear_once():
    grid = parse_grid(
        with_(sweeps=[{"name": "main"}, {"methods": ["bias"], "bases": ["pretrained"]}])
    )

    cells = expand(grid)

    assert len(cells) == len({c.id for c in cells}) == 2 * 2 * 2


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"methods": ["bitfit"]}, "methods.0"),
        ({"methods": []}, "methods: must not be empty"),
        (
            {"families": ["hf_vit"], "methods": ["text_prompt"]},
            "methods: text_prompt is open_clip only",
        ),
        ({"alphas": [0]}, "alphas"),
        ({"alphas": [-1.0]}, "alphas"),
        ({"alphas": ["often"]}, "alphas"),
        ({"shots": [0]}, "shots"),
        ({"shots": ["few"]}, "shots"),
        ({"shots": [2.5]}, "shots"),
        ({"colour": "blue"}, "colour: unknown field"),
        ({"rounds": 0}, "rounds"),
        ({"organisations": 0}, "organisations"),
        ({"families": ["tensorflow"]}, "families.0"),
        ({"bases": ["imagenet"]}, "bases.0"),
        ({"modes": ["centralised"]}, "modes.0"),
        ({"models": {"open_clip": BASE["models"]["open_clip"]}}, "models.hf_vit: missing"),
        (
            {
                "models": {
                    **BASE["models"],
                    "hf_vit": {"arch": "fedtune-tiny-vit", "pretrained": None},
                }
            },
            "models.hf_vit.pretrained",
        ),
        ({"method_settings": {"bias": {"lr": -1}}}, "method_settings.bias.lr"),
        ({"method_settings": {"bias": {"learning_rate": 1}}}, "method_settings.bias.learning_rate"),
        ({"sweeps": [{"methods": ["nope"]}]}, "sweeps.0.methods.0"),
        ({"sweeps": [{"families": ["hf_vit"], "methods": ["text_prompt"]}]}, "sweeps.0.methods"),
    ],
)
def test_a_bad_grid_is_one_line_naming_the_field(changes, field):
    with pytest.raises(GridError) as err:
        parse_grid(with_(**changes), "my.yaml")

    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("my.yaml: ")
    assert field in message


def test_a_missing_required_field_is_named():
    data = dict(BASE)
    del data["rounds"]

    with pytest.raises(GridError, match=r"rounds: required field is missing"):
        parse_grid(data)


def test_grid_files_that_cannot_be_read_say_so_in_one_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    not_a_mapping = tmp_path / "list.yaml"
    not_a_mapping.write_text(yaml.safe_dump(["a", "b"]))

    for path, expected in [
        (broken, "not valid YAML"),
        (not_a_mapping, "expected a mapping"),
        (tmp_path / "absent.yaml", "cannot read grid file"),
    ]:
        with pytest.raises(GridError, match=expected) as err:
            load_grid(path)
        assert "\n" not in str(err.value)


def test_an_unknown_preset_is_refused():
    with pytest.raises(GridError, match="--preset: unknown preset 'huge'"):
        load_preset("huge")
