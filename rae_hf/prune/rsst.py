"""RSST's growing penalty: `grad += lambda * w` on weights the magnitude mask keeps but the structured mask drops.

Curves (seed `main_imp_fillback.py`, with its schedule bug fixed: lambda is updated at every step, not only while
`g * i < 1`, which left it at ~2.5e-11 for the whole round):
- `exp_custom_exponents` (the launcher's default): `g / (e - 1) * (exp(((i + 1) / j) ** k) - 1)`, `i` the update
  index within the epoch, `j` updates per epoch: it climbs to `g` within every epoch and restarts;
- `exp_custom`: the same with `k = 1`;
- `x`, `x^2`, `x^3`, `exp`: `g n`, `(g n) ** 2`, `(g n) ** 3`, `exp(g n)` with `n` the updates so far this round.
"""

from __future__ import annotations

import math

RSST_CURVES = ("exp_custom_exponents", "exp_custom", "x", "x^2", "x^3", "exp")


def rsst_lambda(curve: str, granularity: float, exponent: float, update: int, updates_per_epoch: int) -> float:
    """Penalty factor at optimizer update `update` (0-based within the round) for `curve`."""
    if curve not in RSST_CURVES:
        raise ValueError(f"reg curve must be one of {RSST_CURVES}, got {curve!r}.")
    if updates_per_epoch < 1:
        raise ValueError(f"updates_per_epoch must be >= 1, got {updates_per_epoch}.")
    g = granularity
    if curve in ("exp_custom_exponents", "exp_custom"):
        k = exponent if curve == "exp_custom_exponents" else 1.0
        i = update % updates_per_epoch
        return g / (math.e - 1) * (math.exp(((i + 1) / updates_per_epoch) ** k) - 1)
    n = update + 1
    if curve == "x":
        return g * n
    if curve == "x^2":
        return (g * n) ** 2
    if curve == "x^3":
        return (g * n) ** 3
    return math.exp(g * n)
