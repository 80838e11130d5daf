"""The method declarations are the one source of method names, families and options."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from shared.families import FAMILY_NAMES
from shared.methods import METHOD_NAMES, METHODS, TextPromptOptions, method_names
from shared.spec import FederationSpec, SpecError, parse_spec
from shared.tuning import get_method
from shared.tuning.registry import _METHODS

README = Path(__file__).resolve().parents[2] / "README.md"


def _spec(family: str, method: str, **method_fields: Any) -> dict[str, Any]:
    return {
        "name": "decl",
        "model": {"family": family, "arch": "tiny"},
        "task": {"classes": ["a", "b"]},
        "method": {"name": method, **method_fields},
    }


def test_every_declared_method_is_implemented_and_nothing_else() -> None:
    assert set(_METHODS) == set(METHOD_NAMES)
    assert all(get_method(name).info is METHODS[name] for name in METHOD_NAMES)


def test_every_declared_family_is_a_spec_family() -> None:
    assert all(m.families and m.families <= set(FAMILY_NAMES) for m in METHODS.values())


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_the_spec_accepts_exactly_the_methods_declared_for_a_family(family: str) -> None:
    accepted = []
    for name in METHOD_NAMES:
        try:
            parse_spec(_spec(family, name))
            accepted.append(name)
        except SpecError:
            pass
    assert accepted == method_names(family)


def test_a_method_on_a_family_it_does_not_support_is_refused_naming_both() -> None:
    with pytest.raises(SpecError, match=r"^method\.name: text_prompt supports model\.family "
                       r"open_clip, not hf_vit$"):  # fmt: skip
        parse_spec(_spec("hf_vit", "text_prompt"))


def test_method_options_are_checked_when_the_spec_is_parsed() -> None:
    with pytest.raises(
        SpecError, match=r"^method\.options\.rank: Extra inputs .* \(method lora\)$"
    ):
        parse_spec(_spec("hf_vit", "lora", options={"rank": 8}))


def test_train_head_on_a_method_that_makes_its_own_head_is_refused() -> None:
    with pytest.raises(SpecError, match=r"^method\.train_head: text_prompt produces"):
        parse_spec(_spec("open_clip", "text_prompt", train_head=True))


def test_method_options_are_parsed_into_the_declared_model_with_defaults() -> None:
    spec = parse_spec(_spec("open_clip", "text_prompt", options={"n_ctx": 4}))

    assert spec.method.method_options("open_clip") == TextPromptOptions(n_ctx=4)


def test_an_unknown_method_lists_the_declared_ones() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(_spec("hf_vit", "prefix_tuning"))

    assert str(err.value) == "method.name: Input should be " + _listed(METHOD_NAMES)


def test_the_spec_schema_lists_the_declared_methods_as_an_enum() -> None:
    schema = FederationSpec.model_json_schema()

    assert schema["$defs"]["MethodSpec"]["properties"]["name"]["enum"] == list(METHOD_NAMES)


def test_the_readme_table_names_every_declared_method() -> None:
    text = README.read_text(encoding="utf-8")
    table = text[text.index("| method | what trains |") :].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \|", table, flags=re.M)

    assert rows == list(METHOD_NAMES)


def _listed(names: tuple[str, ...]) -> str:
    quoted = [f"'{n}'" for n in names]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]
