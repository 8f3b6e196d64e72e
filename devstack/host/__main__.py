"""``python -m devstack.host``: run a function app on the local Functions host.

Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT: no new work, in-flight invocations finish
within ``--shutdown-timeout``, then the app's telemetry is flushed within
``--telemetry-flush-timeout``); 1 when invocations were still running at that deadline (they are
abandoned, as the Functions host abandons them, and the process exits without waiting for
them); 2 for a configuration error (bad settings, unresolvable ``%SETTING%``, port in use).

The log is one entry per record: only a record starts a line at column 0; the rest of a
multi-line record (a traceback) is indented and control characters are escaped, so nothing a
function logs or raises (a blob name with a newline in an exception message) can forge an entry.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from devstack.host.host import Host, HostOptions
from devstack.host.settings import HostConfigError
from shared.naming import printable

log = logging.getLogger("devstack.host")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: What starts every line of a record after its first.
CONTINUATION = "    "


class OneEntryFormatter(logging.Formatter):
    """Every record is exactly one entry of the log (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        lines = super().format(record).splitlines() or [""]
        return f"\n{CONTINUATION}".join(printable(line) for line in lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.host",
        description="Local Azure Functions host for a Python v2-model function app.")
    parser.add_argument("--script-root", type=Path, required=True,
                        help="folder with function_app.py, host.json and local.settings.json")
    parser.add_argument("--port", type=int, default=7071, help="HTTP port on 127.0.0.1")
    parser.add_argument("--state-dir", type=Path, required=True,
                        help="folder for keys.json and other host state")
    parser.add_argument("--settings", type=Path, default=None,
                        help="local.settings.json to use (created from the script root's "
                             "local.settings.json.example if missing)")
    parser.add_argument("--env-file", type=Path, default=None,
                        help="KEY=VALUE file applied like environment variables")
    parser.add_argument("--blob-poll-interval", type=float, default=1.0,
                        help="seconds between container scans (default 1)")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0,
                        help="seconds to let in-flight invocations finish on shutdown")
    parser.add_argument("--telemetry-flush-timeout", type=float, default=5.0,
                        help="seconds to flush the app's telemetry after them (default 5)")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneEntryFormatter(LOG_FORMAT))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    # The storage SDK logs every request at INFO; the host's own lines are what matter here.
    logging.getLogger("azure").setLevel(logging.WARNING)
    options = HostOptions(
        script_root=args.script_root, state_dir=args.state_dir, port=args.port,
        settings_path=args.settings, env_file=args.env_file,
        blob_poll_interval=args.blob_poll_interval, shutdown_timeout=args.shutdown_timeout,
        telemetry_flush_timeout=args.telemetry_flush_timeout)
    host = Host(options)
    try:
        host.load()
        asyncio.run(host.serve(install_signal_handlers=True))
    except HostConfigError as exc:
        log.error("%s", exc)
        return 2
    if host.abandoned:
        # Their worker threads would keep the interpreter from exiting (it joins them), so the
        # stop would only end at the caller's SIGKILL. Telemetry was flushed already.
        log.warning("Exiting with %d invocation(s) still running", host.abandoned)
        logging.shutdown()
        os._exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
