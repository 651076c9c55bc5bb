"""Model specs: a JSON/YAML description of a network that the coordinator owns and sends to peers.

A spec is an input shape (without the batch axis), a class count and an ordered list of layers.
This module validates a spec, infers every layer's output shape and parameter count, and computes
the canonical hash that "confirm model type" (code 1003) compares — all without MXNet, so the
coordinator can check specs and the protocol can carry them without importing the runtime.

A spec may instead name a user model class (``"custom": "pkg.module:Class"``). Such code is
loaded locally on each machine and never transferred: only the spec (and its hash) travels.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ringfl.errors import SpecError

Shape = tuple[int, ...]
ACTIVATIONS = ("relu", "tanh", "sigmoid", "softrelu")


@dataclass(frozen=True)
class LayerInfo:
    """One layer as the runtime will build it: its normalised config and inferred sizes."""

    index: int
    type: str
    config: dict[str, Any]
    output_shape: Shape
    params: tuple[tuple[str, Shape], ...]  # (role, shape) in MXNet's collect_params order
    trainable: int

    @property
    def num_params(self) -> int:
        return sum(math.prod(shape) for _, shape in self.params)


@dataclass(frozen=True)
class ModelSpec:
    """A validated spec. ``raw`` is the normalised mapping that is hashed and sent on the wire."""

    raw: dict[str, Any]
    layers: tuple[LayerInfo, ...] = field(default=())

    @property
    def name(self) -> str:
        return str(self.raw.get("name", "model"))

    @property
    def input_shape(self) -> Shape:
        return tuple(self.raw["input_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.raw["num_classes"])

    @property
    def custom(self) -> str | None:
        return self.raw.get("custom")

    @property
    def num_params(self) -> int:
        """Length of the flat parameter vector (for custom models: known after building)."""
        return sum(layer.num_params for layer in self.layers)

    @property
    def trainable_params(self) -> int:
        return sum(layer.trainable for layer in self.layers)

    def canonical_json(self) -> str:
        return canonical_json(self.raw)

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON: equal for specs that differ only in key order/whitespace."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def canonical_json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


# --- layer rules: normalise config, infer output shape and parameter shapes ----------------------

LayerRule = Callable[[dict[str, Any], Shape], tuple[Shape, list[tuple[str, Shape]], int]]


def _int(cfg: dict[str, Any], key: str, default: int | None = None, minimum: int = 1) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise SpecError(f"layer '{cfg['type']}' needs '{key}'")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(f"layer '{cfg['type']}': '{key}' must be an integer >= {minimum}, got {value!r}")
    cfg[key] = value
    return value


def _activation(cfg: dict[str, Any], key: str = "activation", required: bool = False) -> None:
    act = cfg.get(key)
    if act is None and not required:
        cfg[key] = None
        return
    if act not in ACTIVATIONS:
        raise SpecError(f"layer '{cfg['type']}': unknown activation {act!r} (valid: {', '.join(ACTIVATIONS)})")


def _dense(cfg: dict[str, Any], shape: Shape) -> tuple[Shape, list[tuple[str, Shape]], int]:
    units = _int(cfg, "units")
    _activation(cfg)
    fan_in = math.prod(shape)
    params = [("weight", (units, fan_in)), ("bias", (units,))]
    return (units,), params, units * fan_in + units


def _spatial(cfg: dict[str, Any], shape: Shape, window_key: str) -> tuple[int, int, int, int, int]:
    if len(shape) != 3:
        raise SpecError(f"layer '{cfg['type']}' needs a (channels, height, width) input, got {list(shape)}")
    window = _int(cfg, window_key)
    stride = _int(cfg, "stride", window if window_key == "pool" else 1)
    padding = _int(cfg, "padding", 0, minimum=0)
    channels, height, width = shape
    out_h = (height + 2 * padding - window) // stride + 1
    out_w = (width + 2 * padding - window) // stride + 1
    if out_h < 1 or out_w < 1:
        raise SpecError(
            f"layer '{cfg['type']}' with {window_key} {window} cannot apply to {height}x{width} "
            f"(output would be {out_h}x{out_w}, below 1x1)"
        )
    return channels, out_h, out_w, window, stride


def _conv2d(cfg: dict[str, Any], shape: Shape) -> tuple[Shape, list[tuple[str, Shape]], int]:
    out_channels = _int(cfg, "channels")
    _activation(cfg)
    in_channels, out_h, out_w, kernel, _ = _spatial(cfg, shape, "kernel")
    params = [("weight", (out_channels, in_channels, kernel, kernel)), ("bias", (out_channels,))]
    count = out_channels * in_channels * kernel * kernel + out_channels
    return (out_channels, out_h, out_w), params, count


def _pool(cfg: dict[str, Any], shape: Shape) -> tuple[Shape, list[tuple[str, Shape]], int]:
    channels, out_h, out_w, _, _ = _spatial(cfg, shape, "pool")
    return (channels, out_h, out_w), [], 0


def _flatten(cfg: dict[str, Any], shape: Shape) -> tuple[Shape, list[tuple[str, Shape]], int]:
    return (math.prod(shape),), [], 0


def _dropout(cfg: dict[str, Any], shape: Shape) -> tuple[Shape, list[tuple[str, Shape]], int]:
    rate = cfg.setdefault("rate", 0.5)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise SpecError(f"layer 'dropout': 'rate' must be in [0, 1), got {rate!r}")
    cfg["rate"] = float(rate)
    return shape, [], 0


def _activation_layer(cfg: dict[str, Any], shape: Shape) -> tuple[Shape, list[tuple[str, Shape]], int]:
    _activation(cfg, "function", required=True)
    return shape, [], 0


def _batchnorm(cfg: dict[str, Any], shape: Shape) -> tuple[Shape, list[tuple[str, Shape]], int]:
    channels = shape[0]
    roles = ("gamma", "beta", "running_mean", "running_var")
    return shape, [(role, (channels,)) for role in roles], 2 * channels


def _recurrent(gates: int) -> LayerRule:
    def rule(cfg: dict[str, Any], shape: Shape) -> tuple[Shape, list[tuple[str, Shape]], int]:
        if len(shape) != 2:
            raise SpecError(f"layer '{cfg['type']}' needs a (steps, features) input, got {list(shape)}")
        hidden = _int(cfg, "hidden")
        num_layers = _int(cfg, "layers", 1)
        sequences = cfg.setdefault("return_sequences", False)
        if not isinstance(sequences, bool):
            raise SpecError(f"layer '{cfg['type']}': 'return_sequences' must be true or false, got {sequences!r}")
        steps, features = shape
        params: list[tuple[str, Shape]] = []
        for layer in range(num_layers):
            width = features if layer == 0 else hidden
            params += [
                (f"l{layer}_i2h_weight", (gates * hidden, width)),
                (f"l{layer}_h2h_weight", (gates * hidden, hidden)),
                (f"l{layer}_i2h_bias", (gates * hidden,)),
                (f"l{layer}_h2h_bias", (gates * hidden,)),
            ]
        count = sum(math.prod(s) for _, s in params)
        return ((steps, hidden) if sequences else (hidden,)), params, count

    return rule


LAYER_RULES: dict[str, LayerRule] = {
    "dense": _dense,
    "conv2d": _conv2d,
    "maxpool": _pool,
    "avgpool": _pool,
    "flatten": _flatten,
    "dropout": _dropout,
    "activation": _activation_layer,
    "batchnorm": _batchnorm,
    "lstm": _recurrent(4),
    "gru": _recurrent(3),
}


# --- parsing --------------------------------------------------------------------------------------


def parse_spec(data: Any, source: str = "spec") -> ModelSpec:
    """Validate a spec mapping and infer shapes; raises SpecError with a one-line message."""
    if not isinstance(data, Mapping):
        raise SpecError(f"{source}: a model spec must be a mapping, got {type(data).__name__}")
    raw = json.loads(json.dumps(dict(data)))  # deep copy, JSON types only
    raw.pop("description", None)
    input_shape = _parse_shape(raw.get("input_shape"), source)
    num_classes = raw.get("num_classes", 10)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise SpecError(f"{source}: 'num_classes' must be an integer >= 2, got {num_classes!r}")
    raw["input_shape"], raw["num_classes"] = list(input_shape), num_classes
    if "custom" in raw:
        return _parse_custom(raw, source)
    layers = raw.get("layers")
    if not isinstance(layers, list) or not layers:
        raise SpecError(f"{source}: 'layers' must be a non-empty list (or give 'custom': 'pkg.module:Class')")
    infos, error = infer_layers(input_shape, layers, source)
    if error is not None:
        raise error
    raw["layers"] = [info.config for info in infos]
    shape = infos[-1].output_shape
    if shape != (num_classes,):
        raise SpecError(f"{source}: the last layer outputs {list(shape)} but num_classes is {num_classes}")
    return ModelSpec(raw=raw, layers=tuple(infos))


def infer_layers(input_shape: Shape, layers: list[Any], source: str = "spec") -> tuple[list[LayerInfo], SpecError | None]:
    """Every layer up to the first invalid one, and that layer's error (None if all parse): the
    model builder shows shapes and counts up to a mistake, computed by the same rules."""
    infos: list[LayerInfo] = []
    shape = input_shape
    for index, layer in enumerate(layers):
        try:
            info = _parse_layer(index, layer, shape, source)
        except SpecError as exc:
            return infos, exc
        infos.append(info)
        shape = info.output_shape
    return infos, None


def _parse_shape(value: Any, source: str) -> Shape:
    valid = isinstance(value, list) and value and all(isinstance(v, int) and v > 0 for v in value)
    if not valid or isinstance(value[0], bool):
        raise SpecError(f"{source}: 'input_shape' must be a list of positive integers, got {value!r}")
    return tuple(value)


def _parse_layer(index: int, layer: Any, shape: Shape, source: str) -> LayerInfo:
    if not isinstance(layer, Mapping) or "type" not in layer:
        raise SpecError(f"{source}: layer {index} must be a mapping with a 'type'")
    cfg = dict(layer)
    kind = cfg["type"]
    rule = LAYER_RULES.get(kind)
    if rule is None:
        raise SpecError(f"{source}: layer {index} has unknown type {kind!r} (valid: {', '.join(LAYER_RULES)})")
    try:
        out_shape, params, trainable = rule(cfg, shape)
    except SpecError as exc:
        raise SpecError(f"{source}: layer {index}: {exc}") from None
    return LayerInfo(index, kind, cfg, tuple(out_shape), tuple(params), trainable)


def _parse_custom(raw: dict[str, Any], source: str) -> ModelSpec:
    target = raw["custom"]
    if not isinstance(target, str) or target.count(":") != 1:
        raise SpecError(f"{source}: 'custom' must be 'pkg.module:Class', got {target!r}")
    raw.setdefault("options", {})
    if not isinstance(raw["options"], Mapping):
        raise SpecError(f"{source}: 'options' of a custom model must be a mapping")
    return ModelSpec(raw=raw, layers=())


def builtin_specs() -> list[str]:
    """Names of the specs shipped in ``ringfl/model/specs``."""
    folder = resources.files("ringfl.model") / "specs"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def builtin_spec_data(name: str) -> dict[str, Any]:
    """A shipped spec as written (before normalising): the model builder starts from it."""
    return json.loads((resources.files("ringfl.model") / "specs" / f"{name}.json").read_text())


def load_spec(name_or_path: str | Path) -> ModelSpec:
    """Load a shipped spec by name (``mlp``, ``cnn``, ``rnn``, ``digits-mlp``) or a JSON/YAML file."""
    text_name = str(name_or_path)
    if text_name in builtin_specs():
        return parse_spec(builtin_spec_data(text_name), source=text_name)
    path = Path(text_name)
    if not path.is_file():
        valid = ", ".join(builtin_specs())
        raise SpecError(f"model spec {text_name!r} is neither a shipped spec ({valid}) nor a file")
    return parse_spec(_read_mapping(path), source=str(path))


def _read_mapping(path: Path) -> Any:
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0]
        raise SpecError(f"{path}: not valid JSON/YAML ({first})") from None


def spec_from_json(text: str, source: str = "received spec") -> ModelSpec:
    """Parse a spec that arrived as canonical JSON (e.g. in a 1003 reply)."""
    try:
        return parse_spec(json.loads(text), source=source)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{source}: not valid JSON ({exc.msg})") from None


def describe(spec: ModelSpec, layers: list[tuple[str, Shape, int]] | None = None) -> str:
    """A table of layers, output shapes and parameter counts (``ringfl model show``)."""
    rows = layers or [
        (_layer_label(info), info.output_shape, info.num_params) for info in spec.layers
    ]
    width = max([len(label) for label, _, _ in rows] + [5])
    lines = [
        f"model {spec.name}  input {list(spec.input_shape)}  classes {spec.num_classes}  hash {spec.hash[:16]}",
        f"{'#':>3}  {'layer':<{width}}  {'output shape':<16}  {'params':>10}",
    ]
    for i, (label, shape, count) in enumerate(rows):
        lines.append(f"{i:>3}  {label:<{width}}  {str(list(shape)):<16}  {count:>10,}")
    total = sum(count for _, _, count in rows)
    lines.append(f"total parameters (flat vector length): {total:,}")
    if spec.layers and spec.trainable_params != total:
        lines.append(f"trainable: {spec.trainable_params:,} (the rest are batch-norm running statistics)")
    return "\n".join(lines)


def _layer_label(info: LayerInfo) -> str:
    cfg = info.config
    details = {
        "dense": lambda: f"{cfg['units']}",
        "conv2d": lambda: f"{cfg['channels']}@{cfg['kernel']}x{cfg['kernel']}/{cfg['stride']}",
        "maxpool": lambda: f"{cfg['pool']}x{cfg['pool']}/{cfg['stride']}",
        "avgpool": lambda: f"{cfg['pool']}x{cfg['pool']}/{cfg['stride']}",
        "dropout": lambda: f"{cfg['rate']}",
        "activation": lambda: f"{cfg['function']}",
        "lstm": lambda: f"{cfg['hidden']}x{cfg['layers']}",
        "gru": lambda: f"{cfg['hidden']}x{cfg['layers']}",
    }
    detail = details.get(info.type, lambda: "")()
    act = cfg.get("activation")
    return f"{info.type}({detail})" + (f" {act}" if act else "")
