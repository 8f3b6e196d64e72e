"""``python -m devstack.monitor --port PORT --state-dir DIR``: run the Monitor emulator."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from devstack.monitor.config import DEFAULT_WORKSPACE_ID, ConfigError, MonitorConfig


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.monitor",
        description="Local Application Insights ingestion + Log Analytics query emulator.",
    )
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument("--state-dir", type=Path, required=True,
                        help="directory for the DuckDB file (monitor.duckdb)")
    parser.add_argument("--workspace-id", default=DEFAULT_WORKSPACE_ID,
                        help=f"workspace the query API serves (default {DEFAULT_WORKSPACE_ID})")
    parser.add_argument("--retention-days", type=float, default=30.0,
                        help="rows older than this are deleted at startup and hourly (default 30)")
    parser.add_argument("--retention-interval", type=float, default=3600.0,
                        help="seconds between retention runs (default 3600)")
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = MonitorConfig(
            state_dir=args.state_dir.resolve(), port=args.port, workspace_id=args.workspace_id,
            retention_days=args.retention_days, retention_interval_s=args.retention_interval,
        )
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from devstack.monitor.app import create_app

    uvicorn.run(create_app(config), host=config.host, port=config.port,
                log_level=args.log_level, access_log=False, lifespan="on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
