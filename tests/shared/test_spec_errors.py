"""`load_spec` refuses a bad spec file with one message naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.spec import SpecError, load_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _tiny() -> dict[str, Any]:
    data = yaml.safe_load((EXAMPLES / "tiny-vit-lora.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _set(path: str, value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        for key in parents:
            data = data[key]
        data[leaf] = value

    return change


BAD_SPECS = [
    (_set("method.name", "prefix_tuning"), r"^method\.name: "),
    (
        lambda d: (_set("model.family", "hf_vit")(d), _set("method.name", "text_prompt")(d)),
        r"text_prompt .* open_clip",
    ),
    (_set("task.classes", []), r"^task\.classes: "),
    (_set("task.classes", ["a", "a"]), r"^task\.classes: .*repeated: a"),
    (_set("rounds.quorum", 1), r"rounds: quorum \(1\) must be at least min_updates \(2\)"),
    (_set("model.family", "timm"), r"^model\.family: "),
    (_set("local_training.optimizer", "adam"), r"^local_training\.optimizer: "),
    (_set("surprise", 1), r"^surprise: Extra inputs"),
    (_set("task.prompt_template", "no slot"), r"^task\.prompt_template: "),
    (lambda d: d.pop("method"), r"^method: Field required"),
]


@pytest.mark.parametrize(("change", "message"), BAD_SPECS)
def test_bad_spec_file_gives_one_message_naming_the_field(
    tmp_path: Path, change: Any, message: str
) -> None:
    data = _tiny()
    change(data)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=message) as info:
        load_spec(path)
    assert "\n" not in str(info.value)


def test_spec_file_that_is_not_yaml_is_named(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="is not valid YAML"):
        load_spec(path)


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_spec_is_valid(example: str) -> None:
    assert load_spec(EXAMPLES / example).name
