"""Numbers as people read them, the same in the terminal, report.md and the plots."""

from __future__ import annotations


def human_bytes(count: float | None) -> str:
    """Decimal units, so the powers of ten on a log axis read as 1 kB, 10 kB, 100 kB...; None is ""."""
    if count is None:
        return ""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 999.5 or unit == "TB":  # 999.7 B would print as "1e+03 B"
            return f"{value:.3g} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
