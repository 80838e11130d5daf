"""Input checked at the boundary, every problem said in one line that names the field.

Shared by the spec, the blob codec, the service's error handler, the client
and the lab, so that a bad input reads the same wherever it is refused.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import GetCoreSchemaHandler
from pydantic_core import CoreSchema, core_schema

__all__ = ["OneOf", "format_validation_error", "load_document"]


class _HasErrors(Protocol):
    """pydantic's `ValidationError`, or FastAPI's `RequestValidationError`."""

    def errors(self) -> Sequence[Any]: ...


def format_validation_error(
    exc: _HasErrors,
    *,
    omit: Collection[str] = (),
    plain: Mapping[str, str] | None = None,
    root: str = "",
) -> str:
    """One clause per problem, naming the field, joined by '; ': `rounds.quorum: must be ...`.

    `omit` drops location parts (FastAPI's "body"); `plain` replaces pydantic's
    message for an error type (`{"extra_forbidden": "unknown field"}`); `root`
    names a problem with the whole input, whose location is empty.
    """
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in omit) or root
        msg = (plain or {}).get(err.get("type", ""), str(err.get("msg", "invalid")))
        msg = msg.removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


@dataclass(frozen=True)
class OneOf:
    """`Annotated[str, OneOf(names)]`: validated and documented like `Literal[*names]`.

    For names a registry declares (methods, strategies): pydantic refuses any
    other value with its usual message and the JSON schema lists them as an
    enum, while the names themselves are written only once, in the registry.
    """

    names: tuple[str, ...]

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.literal_schema(list(self.names))


def load_document(path: str | Path, what: str, error: type[Exception]) -> Any:
    """The data of a YAML file (JSON when it ends in .json); `error` with one line otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    is_json = path.suffix == ".json"
    try:
        return json.loads(text) if is_json else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise error(
            f"{path} is not valid {'JSON' if is_json else 'YAML'}: {str(exc).splitlines()[0]}"
        ) from None
