"""The published JSON Schema of a model spec (``ringfl/model/spec.schema.json``).

The schema describes the fields a spec may have; :mod:`ringfl.model.spec` stays the authority on
shapes (a kernel larger than its input is valid JSON but not a valid network). The model builder
validates with both, so each field error is reported at the field it belongs to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from ringfl.errors import SpecError


@dataclass(frozen=True)
class FieldError:
    """One problem, located: ``path`` is the JSON path of the offending value (``["layers", 2, "units"]``)."""

    path: tuple[str | int, ...]
    message: str


@cache
def spec_schema() -> dict[str, Any]:
    """The schema as shipped in the package."""
    return json.loads((resources.files("ringfl.model") / "spec.schema.json").read_text())


def schema_errors(data: Any) -> list[FieldError]:
    """Every schema violation of ``data``, most specific first, one per path."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(spec_schema())
    found: dict[tuple[str | int, ...], FieldError] = {}
    for error in sorted(validator.iter_errors(data), key=lambda e: -len(e.absolute_path)):
        path, message = tuple(error.absolute_path), error.message
        if error.validator == "additionalProperties":
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))[0]
            path, message = (*path, extra), f"unknown field {extra!r}"
        elif error.validator == "required" and isinstance(error.instance, dict):
            missing = [key for key in error.validator_value if key not in error.instance][0]
            path, message = (*path, missing), f"'{missing}' is required"
        elif error.validator == "oneOf":
            message = "give either 'layers' or 'custom'"
        if not any(path[:len(p)] == p or p[:len(path)] == path for p in found):
            found[path] = FieldError(path, message)
    return list(found.values())


def check_schema(data: Any, source: str = "spec") -> None:
    """Raise a one-line :class:`SpecError` for the first schema violation."""
    errors = schema_errors(data)
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.path) or "spec"
        raise SpecError(f"{source}: {where}: {first.message}")
