"""`load_spec` refuses a bad spec file with one message naming the field."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.spec import MAX_DURATION_S, FederationSpec, SpecError, load_spec, parse_spec

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

INF, NAN = float("inf"), float("nan")
NOT_FINITE = [
    (_set("rounds.deadline_s", INF), r"^rounds\.deadline_s: Input should be a finite number$"),
    (_set("rounds.deadline_s", NAN), r"^rounds\.deadline_s: Input should be a finite number$"),
    (_set("local_training.weight_decay", INF), r"^local_training\.weight_decay: .*finite"),
    (_set("aggregation", {"max_abs_value": INF}), r"^aggregation\.max_abs_value: .*finite"),
    (
        _set("aggregation", {"strategy": "fedadam", "options": {"tau": INF}}),
        r"^aggregation\.options: tau must be a finite number, not inf$",
    ),
    (
        _set("method.options.alpha", INF),
        r"^method\.options: alpha must be a finite number, not inf",
    ),
    (_set("method.options.alpha", -INF), r"^method\.options: alpha must be a finite number"),
    (_set("secure_aggregation", {"unmask_s": INF}), r"^secure_aggregation\.unmask_s: .*finite"),
    (
        _set(
            "privacy",
            {
                "mechanism": "central_gaussian",
                "clip_norm": 1.0,
                "noise_multiplier": 1,
                "delta": 1e-5,
                "max_epsilon": INF,
            },
        ),
        r"^privacy\.max_epsilon: .*finite",
    ),
]

TOO_LONG = [
    (_set("rounds.deadline_s", 1e12), r"^rounds\.deadline_s: .*less than or equal to 31622400"),
    (
        _set("secure_aggregation", {"masked_input_s": 1e12}),
        r"^secure_aggregation\.masked_input_s: .*less than or equal to 31622400",
    ),
    (
        _set("secure_aggregation", {"advertise_s": 31622401}),
        r"^secure_aggregation\.advertise_s: .*less than or equal to 31622400",
    ),
]

ONE_SLOT = (
    "prompt_template must contain exactly one '{}', where the class name goes, and no other field"
)
BAD_TEMPLATES = [
    ("a photo of a {}, a type of {}.", f"{ONE_SLOT}; it has {{}}, {{}}"),
    ("a photo of a {name}.", f"{ONE_SLOT}; it has {{name}}"),
    ("a photo of a {0}.", f"{ONE_SLOT}; it has {{0}}"),
    ("a photo of a {:d}.", f"{ONE_SLOT}; it has {{:d}}"),
    (
        "a photo of a {} }.",
        "prompt_template is not a format string (Single '}' encountered in format string); "
        "write a literal brace as '{{' or '}}'",
    ),
    ("a photo of a {{}}.", "prompt_template must contain '{}' where the class name goes"),
]


def _refusal(tmp_path: Path, change: Any) -> str:
    """The one-line message `load_spec` refuses the tiny example with, once changed."""
    data = _tiny()
    change(data)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize(("change", "message"), BAD_SPECS)
def test_bad_spec_file_gives_one_message_naming_the_field(
    tmp_path: Path, change: Any, message: str
) -> None:
    assert re.search(message, _refusal(tmp_path, change))


@pytest.mark.parametrize(("change", "message"), NOT_FINITE)
def test_nan_and_infinity_are_refused_in_every_float_of_the_spec(
    tmp_path: Path, change: Any, message: str
) -> None:
    assert re.search(message, _refusal(tmp_path, change))


@pytest.mark.parametrize(("change", "message"), TOO_LONG)
def test_a_duration_past_a_year_is_refused(tmp_path: Path, change: Any, message: str) -> None:
    assert re.search(message, _refusal(tmp_path, change))


@pytest.mark.parametrize(("template", "message"), BAD_TEMPLATES)
def test_a_prompt_template_without_exactly_one_slot_is_refused(
    tmp_path: Path, template: str, message: str
) -> None:
    refusal = _refusal(tmp_path, _set("task.prompt_template", template))

    assert refusal == f"task.prompt_template: {message}"


def test_a_prompt_template_with_literal_braces_formats_every_class() -> None:
    data = _tiny() | {"task": {"classes": ["cat", "dog"], "prompt_template": "{{{}}} photo"}}

    spec = parse_spec(data)

    assert [spec.task.prompt_template.format(c) for c in spec.task.classes] == [
        "{cat} photo",
        "{dog} photo",
    ]


def test_the_longest_durations_survive_storage_and_convert_to_dates() -> None:
    data = _tiny()
    data["rounds"]["deadline_s"] = MAX_DURATION_S
    data["secure_aggregation"] = {"masked_input_s": MAX_DURATION_S}

    stored = parse_spec(data).model_dump_json()
    spec = FederationSpec.model_validate_json(stored)

    assert spec.rounds.deadline_s == MAX_DURATION_S
    assert datetime.fromtimestamp(time.time() + spec.rounds.deadline_s).year < 9999


def test_spec_file_that_is_not_yaml_is_named(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="is not valid YAML"):
        load_spec(path)


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_spec_is_valid(example: str) -> None:
    assert load_spec(EXAMPLES / example).name
