"""How settings are named, ordered and formatted: labels, keys' slugs, legend labels, table cells.

A setting is named by its parameters alone, so everything here works on parameter mappings (and
on :class:`~ringfl.experiments.results.SettingResult` lists only to compare their parameters).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ringfl.experiments.results import SettingResult

REFERENCE_MODES = ("centralized", "standalone")
MODE_ORDER = ("centralized", "standalone", "coordinator", "ring")  # reference lines first
PARAM_COLUMNS = (
    "mode", "algorithm", "topology", "peers", "theta_u", "theta_d", "gamma", "epsilon",
    "partition", "alpha", "model", "rounds", "seed", "data",
)  # fmt: skip

LABEL_FIELDS = ("theta_u", "theta_d", "gamma", "epsilon", "partition")
_SYMBOLS = {"theta_u": "θu", "theta_d": "θd", "gamma": "γ", "epsilon": "ε"}
_HEAD_PARAMS = frozenset({"mode", "algorithm", "topology", "peers", "alpha"})  # alpha: in partition
_SORT_PARAMS = (
    "topology", "peers", "algorithm", "partition", "alpha", "theta_u", "theta_d", "gamma",
    "epsilon", "model", "seed",
)  # fmt: skip

# --- naming and ordering -----------------------------------------------------------------


def setting_label(params: Mapping[str, Any]) -> str:
    """A setting's full label: the standard label fields, then any grid axes beyond the standard
    columns (``robust=median``...), so labels stay distinct."""
    extra = sorted(set(params) - set(PARAM_COLUMNS) - _HEAD_PARAMS)
    return params_label(params, (*LABEL_FIELDS, *extra))


def ordered(results: Iterable[SettingResult]) -> list[SettingResult]:
    """Reference lines first, then coordinator and ring runs grouped by topology, size, algorithm."""
    return sorted(results, key=_sort_key)


def legend_labels(results: Sequence[SettingResult]) -> list[str]:
    """Labels showing only the parameters that differ between ``results``: a legend repeating
    ``θd=1 γ=0.01 iid`` on every line hides the one thing that changes."""
    names = varying(results)
    return [params_label(r.setting.params, names) for r in results]


def _sort_key(result: SettingResult) -> tuple:
    params = result.setting.params
    mode = result.setting.mode
    rank = MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER)
    return (rank, mode, *(_sortable(params.get(n)) for n in _SORT_PARAMS), result.setting.key)


def _sortable(value: Any) -> tuple[int, float, str]:
    """Numbers before text before missing, so mixed-type columns still sort."""
    if value is None:
        return (2, 0.0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, format_value(value))


def canonical(params: Mapping[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def slug(params: Mapping[str, Any]) -> str:
    peers = params.get("peers")
    parts = [
        params.get("mode"),
        params.get("algorithm"),
        _topology_name(params.get("topology")),
        None if peers is None else f"n{peers}",
    ]
    text = "-".join(str(p) for p in parts if p not in (None, ""))
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-") or "setting"


def _topology_name(value: Any) -> str | None:
    """A topology given as a file path is named by its stem (``topologies/ring8.yaml`` → ``ring8``)."""
    return Path(str(value)).stem if value not in (None, "") else None


def _head(params: Mapping[str, Any]) -> str:
    mode = str(params.get("mode") or "?")
    if mode in REFERENCE_MODES:  # standalone depends on the peer count (shard size): name it
        peers = params.get("peers") if mode == "standalone" else None
        return mode if peers is None else f"{mode}{peers}"
    where = _topology_name(params.get("topology")) or ("coord" if mode == "coordinator" else mode)
    peers = params.get("peers")
    if peers is not None:
        where += f"-{peers}" if where[-1].isdigit() else str(peers)
    algorithm = params.get("algorithm")
    return f"{where} {algorithm}" if algorithm else where


def _applies(mode: str, name: str) -> bool:
    """Reference runs have no exchange, so θ/γ/ε mean nothing there (centralized: nor partition)."""
    if mode == "centralized":
        return name not in _SYMBOLS and name != "partition"
    return mode != "standalone" or name not in _SYMBOLS


def _token(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or not _applies(str(params.get("mode") or ""), name):
        return None
    if name == "partition":
        alpha = params.get("alpha")
        return (
            f"dir(α={format_value(alpha)})" if value == "dirichlet" and alpha is not None else format_value(value)
        )
    return f"{_SYMBOLS.get(name, name)}={format_value(value)}"


def params_label(params: Mapping[str, Any], names: Iterable[str]) -> str:
    return " ".join([_head(params), *(t for n in names if (t := _token(params, n)))])


def varying(results: Sequence[SettingResult]) -> list[str]:
    """Parameter names whose label token differs between the settings."""
    names = {k for r in results for k in r.setting.params} - _HEAD_PARAMS - set(LABEL_FIELDS)
    return [n for n in (*LABEL_FIELDS, *sorted(names)) if len(_tokens(results, n)) > 1]


def shared_note(results: Sequence[SettingResult]) -> str:
    """The label parameters every setting shares: said once in a title, not on every line."""
    shared = (_tokens(results, name) for name in (*LABEL_FIELDS, "model"))
    return " ".join(t for tokens in shared if len(tokens) == 1 and (t := next(iter(tokens))))


def _tokens(results: Sequence[SettingResult], name: str) -> set[str | None]:
    """The distinct tokens of ``name`` among settings that set it: leaving a parameter out (θd in
    a coordinator run) does not make it vary, but an explicit None (no ε: no DP) does."""
    return {
        _token(r.setting.params, name)
        for r in results
        if name in r.setting.params and _applies(r.setting.mode, name)
    }


# --- formatting --------------------------------------------------------------------------


def format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def csv_cell(value: Any) -> Any:
    """A CSV cell: scalars as they are, nested values (e.g. a data spec) as compact JSON."""
    return value if value is None or isinstance(value, (str, int, float)) else format_value(value)


def format_number(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)



