"""``python -m devstack.monitor --port PORT --state-dir DIR``: run the Monitor emulator."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from devstack.monitor import limits as lim
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
    parser.add_argument("--query-max-concurrent", type=int, default=lim.DEFAULT_MAX_CONCURRENT,
                        help="queries one caller runs at once; more wait (default 5)")
    parser.add_argument("--query-max-queued", type=int, default=lim.DEFAULT_MAX_QUEUED,
                        help="queries one caller may have waiting; more get 429 (default 200)")
    parser.add_argument("--query-queue-timeout", type=float, default=lim.DEFAULT_QUEUE_TIMEOUT_S,
                        help="seconds a query may wait for a slot before 429 (default 180)")
    parser.add_argument("--query-rate-limit", type=int, default=lim.DEFAULT_RATE_LIMIT,
                        help="queries one caller may start per rate window (default 200)")
    parser.add_argument("--query-rate-window", type=float, default=lim.DEFAULT_RATE_WINDOW_S,
                        help="the rate window in seconds (default 30)")
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        limits = lim.QueryLimits(
            max_concurrent=args.query_max_concurrent, max_queued=args.query_max_queued,
            queue_timeout_s=args.query_queue_timeout, rate_limit=args.query_rate_limit,
            rate_window_s=args.query_rate_window,
        )
        config = MonitorConfig(
            state_dir=args.state_dir.resolve(), port=args.port, workspace_id=args.workspace_id,
            retention_days=args.retention_days, retention_interval_s=args.retention_interval,
            limits=limits,
        )
    except (ConfigError, lim.LimitsError) as exc:
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
