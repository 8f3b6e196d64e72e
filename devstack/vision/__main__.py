"""``python -m devstack.vision --port PORT --key KEY [--host 127.0.0.1] [--tier F0|S1] ...``

Serves the emulator with uvicorn on loopback. Ready when ``GET /healthz`` answers 200.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from devstack.vision.app import ConnectionDropped, create_app
from devstack.vision.config import ConfigError, VisionConfig


class _DropFilter(logging.Filter):
    """Injected connection drops are intentional: keep their tracebacks out of the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, ConnectionDropped):
                return False
            exc = exc.__cause__ or exc.__context__ or _first_of_group(exc)
        return True


def _first_of_group(exc: BaseException) -> BaseException | None:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return exc.exceptions[0]
    return None


def parse_args(argv: Sequence[str] | None = None) -> VisionConfig:
    parser = argparse.ArgumentParser(prog="python -m devstack.vision", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True, help="the subscription key clients must send")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tier", choices=["F0", "S1"], default="S1")
    parser.add_argument("--tps", type=float, default=10.0, help="S1 calls per second")
    parser.add_argument("--per-minute", type=int, default=20, help="F0 calls per minute")
    parser.add_argument("--monthly-quota", type=int, default=5_000, help="F0 calls per month")
    parser.add_argument("--concurrency", type=int, default=2, help="parallel image analyses")
    parser.add_argument("--ocr-threads", type=int, default=1,
                        help="the OCR engine's threads per call (more: faster alone, more CPU)")
    args = parser.parse_args(argv)
    try:
        return VisionConfig(
            key=args.key,
            host=args.host,
            port=args.port,
            tier=args.tier,
            tps=args.tps,
            per_minute=args.per_minute,
            monthly_quota=args.monthly_quota,
            max_concurrency=args.concurrency,
            ocr_threads=args.ocr_threads,
        )
    except ConfigError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("uvicorn.error").addFilter(_DropFilter())
    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        log_level="info",
        access_log=False,
        lifespan="on",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
