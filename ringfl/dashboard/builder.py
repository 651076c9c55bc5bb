"""The model builder's server side: check a spec as the user builds it.

Shapes and parameter counts come from :mod:`ringfl.model.spec` (the code behind ``ringfl model
show``), field errors from the published JSON Schema; each error carries the JSON path of the
field it belongs to, so the page can show it next to that field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ringfl.errors import SpecError
from ringfl.model.schema import FieldError, schema_errors, spec_schema
from ringfl.model.spec import describe, infer_layers, parse_spec

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def inspect_spec(data: Any) -> dict[str, Any]:
    """Per-layer output shapes and parameter counts (up to the first invalid layer), every error
    located by path, and — when the spec is valid — its ``ringfl model show`` table and hash."""
    errors = schema_errors(data)
    result: dict[str, Any] = {"ok": False, "layers": [], "errors": []}
    if not isinstance(data, dict):
        result["errors"] = [_plain(e) for e in errors]
        return result
    input_ok = not any(e.path[:1] == ("input_shape",) for e in errors)
    layers = data.get("layers")
    if input_ok and isinstance(layers, list) and layers:
        infos, error = infer_layers(tuple(data["input_shape"]), layers)
        result["layers"] = [{"index": i.index, "type": i.type, "output_shape": list(i.output_shape),
                             "params": i.num_params, "trainable": i.trainable} for i in infos]
        flagged = {e.path[1] for e in errors if e.path[:1] == ("layers",) and len(e.path) > 1}
        if error is not None and len(infos) not in flagged:
            errors.append(_located(len(infos), layers[len(infos)], error))
    if not errors:
        try:
            spec = parse_spec(data)
        except SpecError as exc:
            errors.append(FieldError(("num_classes",), _short(exc)))
        else:
            result.update(ok=True, spec=spec.raw, table=describe(spec), hash=spec.hash,
                          num_params=spec.num_params, trainable=spec.trainable_params)
    result["errors"] = [_plain(e) for e in errors]
    return result


def _located(index: int, layer: Any, error: SpecError) -> FieldError:
    """A shape error of layer ``index``, at the field its message names (else at the layer)."""
    message = _short(error)
    fields = spec_schema()["$defs"].get(layer.get("type"), {}).get("properties", {}) if isinstance(layer, dict) else {}
    named = [f for f in fields if f != "type" and re.search(rf"\b{f}\b", message)]
    return FieldError(("layers", index, *named[:1]), message)


def _short(error: SpecError) -> str:
    """The message without the "spec: layer N:" prefix the page shows by position anyway."""
    return re.sub(r"^spec: (layer \d+: )?", "", str(error))


def _plain(error: FieldError) -> dict[str, Any]:
    return {"path": list(error.path), "message": error.message}


def save_spec(folder: Path, name: str, data: Any) -> Path:
    """Write a valid spec as ``folder/name.json`` (what ``ringfl model show`` and ``--model`` read)."""
    if not isinstance(name, str) or not NAME.match(name):
        raise SpecError(f"spec name {name!r}: use letters, digits, '_', '-' or '.' (at most 64)")
    checked = inspect_spec(data)
    if not checked["ok"]:
        first = checked["errors"][0]
        raise SpecError(f"cannot save an invalid spec: {'/'.join(map(str, first['path']))}: {first['message']}")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
