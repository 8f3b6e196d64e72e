"""The scale-out targets and how a run is judged against them (the bench and its simulation).

A run with changes (the limit moves, instances join or leave) is allowed ``RECONVERGE_S`` after
each to be back within the targets: goodput, 429 share and fairness are judged over the
*settled* seconds, the ones outside those allowances, and the time to re-converge is judged on
its own. A steady run has no allowance: every second counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

GOODPUT, SHARE_429, FAIRNESS, RECONVERGE_S = 0.95, 0.02, 0.8, 10.0


def settled_seconds(seconds: int, events: Iterable[float],
                    allowance: float = RECONVERGE_S) -> list[int]:
    """Whole seconds of a run that overlap no ``[event, event + allowance)``."""
    marks = list(events)
    return [s for s in range(seconds) if not any(s + 1 > e and s < e + allowance for e in marks)]


def share(part: Sequence[float], whole: Sequence[float], seconds: Iterable[int]) -> float:
    """``sum(part) / sum(whole)`` over ``seconds`` (0 when ``whole`` sums to 0 there)."""
    chosen = list(seconds)
    total = sum(whole[s] for s in chosen)
    return sum(part[s] for s in chosen) / total if total else 0.0


def fairness(per_instance_ok: Sequence[Sequence[int]], fair: Sequence[Sequence[float]],
             seconds: Iterable[int]) -> float:
    """min/max over instances of successes against the fair share, over ``seconds``;
    ``per_instance_ok[i][s]``: instance ``i``'s successes in second ``s``, ``fair`` alike."""
    chosen = list(seconds)
    rates = []
    for ok, due in zip(per_instance_ok, fair, strict=True):
        owed = sum(due[s] for s in chosen)
        if owed > 0:
            rates.append(sum(ok[s] for s in chosen) / owed)
    return min(rates) / max(rates) if rates and max(rates) > 0 else 0.0


def fair_shares(limit: Sequence[float], spans: Sequence[tuple[float, float]]) -> list[list[float]]:
    """Per instance and second: an equal split of that second's limit among those running."""
    out = [[0.0] * len(limit) for _ in spans]
    for s, allowed in enumerate(limit):
        running = [i for i, (start, stop) in enumerate(spans) if start <= s < stop]
        for i in running:
            out[i][s] = allowed / len(running)
    return out
