"""Honest numbers: a proportion with its n and 95% Wilson interval, and the "did it learn" verdict.

Every accuracy and win rate the workbench reports goes through `proportion`, so the CLI, the
JSON reports and the app all show the same n and interval. Ties count half (k may be fractional);
the Wilson interval is then the usual approximation with that k.
"""

from __future__ import annotations

import math
from typing import Any

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal
MIN_DECISIVE_PAIRS = 30  # fewer held-out pairs than this cannot tell learning from luck


def wilson_interval(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials (Wilson 1927); (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in [0, n], got k={k}, n={n}")
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(k: float, n: int) -> dict[str, Any]:
    """{"value", "n", "low", "high"}: k/n with its 95% Wilson interval (value None when n = 0)."""
    low, high = wilson_interval(k, n)
    return {"value": (k / n) if n else None, "n": n, "low": low, "high": high}


def fmt_proportion(p: dict[str, Any] | None, digits: int = 2) -> str:
    """'0.83 [0.75, 0.89] (n=120)' — the one way the workbench prints a proportion."""
    if not p or p.get("value") is None:
        return "n/a (n=0)"
    return f"{p['value']:.{digits}f} [{p['low']:.{digits}f}, {p['high']:.{digits}f}] (n={p['n']})"


def win_rate(outcomes: list[float]) -> dict[str, Any]:
    """Win rate of 1 (win) / 0.5 (tie) / 0 (loss) outcomes, ties counting half, with its interval
    and the counts of each outcome."""
    out = proportion(sum(outcomes), len(outcomes))
    out.update(
        wins=sum(1 for o in outcomes if o == 1.0),
        ties=sum(1 for o in outcomes if o == 0.5),
        losses=sum(1 for o in outcomes if o == 0.0),
    )
    return out


def learning_verdict(accuracy: float | None, n: int, untrained: float | None) -> dict[str, Any]:
    """Whether a reward model's held-out accuracy shows it learned: "learned", "learned_nothing"
    (the 95% Wilson lower bound is not above both chance (0.5) and the untrained model's accuracy on
    the same pairs) or "too_small" (fewer than MIN_DECISIVE_PAIRS held-out pairs). Always with a
    sentence that names the reason and the fix."""
    if accuracy is None or n < MIN_DECISIVE_PAIRS:
        return {
            "status": "too_small",
            "message": (
                f"held-out split too small to tell: {n} pairs (need >= {MIN_DECISIVE_PAIRS}); "
                "label more pairs or export with a larger --test-fraction"
            ),
        }
    low, high = wilson_interval(accuracy * n, n)
    bar = max(0.5, untrained if untrained is not None else 0.5)
    if low > bar:
        return {
            "status": "learned",
            "message": f"held-out accuracy {accuracy:.2f} [{low:.2f}, {high:.2f}] (n={n}) is above {bar:.2f}",
        }
    return {
        "status": "learned_nothing",
        "message": (
            f"the reward model LEARNED NOTHING measurable: held-out accuracy {accuracy:.2f} [{low:.2f}, {high:.2f}] "
            f"(n={n}) is not above max(chance, untrained accuracy {untrained if untrained is not None else 0.5:.2f}) "
            "by more than noise; check the labels' agreement, label more pairs, or train longer / with a higher "
            "learning rate"
        ),
    }
