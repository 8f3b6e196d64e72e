"""The app's telemetry when the local host stops: flushed after the last invocation, bounded.

In Azure the Functions host ends the worker process and the worker flushes nothing itself, so an
app relies on its own exit handlers. The local host runs the app in its own process, so on a
graceful stop it can do what a careful worker would: once the in-flight invocations have ended,
flush every handler of the root logger (a queueing handler hands its records on) and then the
global OpenTelemetry tracer, meter and logger providers, whoever configured them.

Generic on purpose: nothing here knows the app's modules, and OpenTelemetry is optional (an app
without it has nothing to flush). Bounded: the work runs on a daemon thread that is waited for at
most ``timeout_s``, since an exporter's flush can block on the network for longer. Never raises.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

__all__ = ["flush_telemetry"]


def flush_telemetry(timeout_s: float) -> bool:
    """Flush logging handlers, then OpenTelemetry providers; False if not done in time."""
    deadline = time.monotonic() + max(timeout_s, 0.0)
    outcome: list[bool] = []

    def run() -> None:
        outcome.append(_flush_all(deadline))

    worker = threading.Thread(target=run, name="host-telemetry-flush", daemon=True)
    worker.start()
    worker.join(max(deadline - time.monotonic(), 0.0))
    return bool(outcome and outcome[0])


def _flush_all(deadline: float) -> bool:
    ok = True
    for handler in list(logging.getLogger().handlers):
        try:
            handler.flush()
        except Exception as exc:  # one broken handler must not keep the providers unflushed
            log.warning("Flushing log handler %s failed (%s)", type(handler).__name__,
                        type(exc).__name__)
            ok = False
    for provider in _providers():
        flush = getattr(provider, "force_flush", None)
        if not callable(flush):  # the API's proxy/no-op providers: nothing configured
            continue
        try:
            ok = bool(flush(max(int((deadline - time.monotonic()) * 1000), 0))) and ok
        except Exception as exc:
            log.warning("Flushing %s failed (%s)", type(provider).__name__, type(exc).__name__)
            ok = False
    return ok


def _providers() -> list[object]:
    try:
        from opentelemetry import metrics, trace
        from opentelemetry._logs import get_logger_provider
    except ImportError:
        return []
    return [trace.get_tracer_provider(), metrics.get_meter_provider(), get_logger_provider()]
