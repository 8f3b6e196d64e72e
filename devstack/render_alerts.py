"""Renders the alert rules of ``shared.monitoring.alerts`` into
``infra/alerts/scheduled-query-rules.json``.

``infra/main.bicep`` loads that file (``loadJsonContent``) and ``infra/app/alerts.bicep`` turns
each entry into a scheduled query rule, so the rules the status function evaluates and the
rules Azure Monitor runs come from one definition. Rendered with the default settings (the
thresholds the infra deploys); the sync test fails when the file drifts from a fresh render.

    python -m devstack.render_alerts          # write the file
    python -m devstack.render_alerts --check  # exit 1 when the file is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RULES_FILE = REPO_ROOT / "infra" / "alerts" / "scheduled-query-rules.json"


def render() -> str:
    from shared.monitoring.alerts import render_alert_rules

    return json.dumps(render_alert_rules(), indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.render_alerts", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args(argv)
    fresh = render()
    if args.check:
        current = RULES_FILE.read_text(encoding="utf-8") if RULES_FILE.exists() else ""
        if current != fresh:
            print(f"{RULES_FILE.relative_to(REPO_ROOT)} is out of date: "
                  "run python -m devstack.render_alerts", file=sys.stderr)
            return 1
        return 0
    RULES_FILE.write_text(fresh, encoding="utf-8")
    print(f"wrote {RULES_FILE.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
