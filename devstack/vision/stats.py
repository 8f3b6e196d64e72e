"""Counters behind ``GET /admin/stats``: calls by status code, by feature and status, and faults.

Mirrors the account metrics a dashboard would read (TotalCalls, errors by class, BlockedCalls).
"""

from __future__ import annotations

import collections
from typing import Any


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.by_status: collections.Counter[str] = collections.Counter()
        self.by_feature: dict[str, collections.Counter[str]] = {}
        self.faults: collections.Counter[str] = collections.Counter()
        self.blocked = 0

    def record(self, status: str, features: tuple[str, ...]) -> None:
        self.total += 1
        self.by_status[status] += 1
        for feature in features:
            self.by_feature.setdefault(feature, collections.Counter())[status] += 1

    def fault(self, kind: str) -> None:
        self.faults[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        def family(prefix: str) -> int:
            return sum(n for code, n in self.by_status.items() if code.startswith(prefix))

        return {
            "total": self.total,
            "successful": family("2"),
            "client_errors": family("4"),
            "server_errors": family("5"),
            "blocked": self.blocked,
            "by_status": dict(sorted(self.by_status.items())),
            "by_feature": {
                name: dict(sorted(counts.items()))
                for name, counts in sorted(self.by_feature.items())
            },
            "faults": dict(sorted(self.faults.items())),
        }
