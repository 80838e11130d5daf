"""One-line validation messages, names from a registry, documents read from files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.validation import OneOf, format_validation_error, load_document


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(ge=1)


class _Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Annotated[str, OneOf(("a", "b", "c"))]
    inner: _Inner
    items: list[int] = Field(default_factory=list, min_length=0)


def _error(data: Any) -> ValidationError:
    with pytest.raises(ValidationError) as err:
        _Outer.model_validate(data)
    return err.value


def test_each_problem_is_one_clause_naming_its_field() -> None:
    message = format_validation_error(_error({"kind": "a", "inner": {"size": 0}, "x": 1}))

    assert message == (
        "inner.size: Input should be greater than or equal to 1; x: Extra inputs are not permitted"
    )


def test_plain_replaces_the_message_of_an_error_type() -> None:
    exc = _error({"kind": "a", "inner": {"size": 1}, "x": 1})

    assert format_validation_error(exc, plain={"extra_forbidden": "unknown field"}) == (
        "x: unknown field"
    )


class _Errors:
    """What FastAPI's RequestValidationError offers: `errors()`."""

    def __init__(self, *errors: dict[str, Any]) -> None:
        self._errors = errors

    def errors(self) -> list[dict[str, Any]]:
        return list(self._errors)


def test_omitted_location_parts_and_the_root_name() -> None:
    exc = _Errors(
        {"loc": ("body", "uses"), "msg": "Value error, too many", "type": "value_error"},
        {"loc": ("body",), "msg": "Field required", "type": "missing"},
    )

    assert format_validation_error(exc, omit=("body",), root="body") == (
        "uses: too many; body: Field required"
    )


def test_one_of_refuses_other_names_like_a_literal() -> None:
    message = format_validation_error(_error({"kind": "d", "inner": {"size": 1}}))

    assert message == "kind: Input should be 'a', 'b' or 'c'"


def test_one_of_is_an_enum_in_the_json_schema() -> None:
    assert _Outer.model_json_schema()["properties"]["kind"]["enum"] == ["a", "b", "c"]


class _Refused(ValueError):
    pass


def test_load_document_reads_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("x: [1, 2]\n")
    (tmp_path / "a.json").write_text('{"x": 3}')

    assert load_document(tmp_path / "a.yaml", "thing", _Refused) == {"x": [1, 2]}
    assert load_document(tmp_path / "a.json", "thing", _Refused) == {"x": 3}


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("absent.yaml", None, r"^cannot read thing file .*absent\.yaml: "),
        ("bad.yaml", "x: [unclosed", r"bad\.yaml is not valid YAML: "),
        ("bad.json", "{", r"bad\.json is not valid JSON: "),
    ],
)
def test_load_document_failures_are_one_line(
    tmp_path: Path, name: str, text: str | None, message: str
) -> None:
    if text is not None:
        (tmp_path / name).write_text(text)

    with pytest.raises(_Refused, match=message) as err:
        load_document(tmp_path / name, "thing", _Refused)
    assert "\n" not in str(err.value)
