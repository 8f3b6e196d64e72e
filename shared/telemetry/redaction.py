"""Redaction: what no exported log record may carry (secrets, blob names when hashing).

``redact`` replaces every secret value Settings declares (``secret_values``) and the current
invocation's blob name (escaped, or its hash under ``TELEMETRY_HASH_BLOB_NAMES``).
``TelemetryLogFilter`` applies it on the exporting handler (on the caller's thread, before the
record reaches the SDK's batch processor) and drops the SDK's own records.

Must never: raise into the caller, or let a record through unredacted.
"""

from __future__ import annotations

import logging
from typing import Final

from opentelemetry.instrumentation.logging.handler import LoggingHandler

from shared.naming import printable
from shared.telemetry.state import _CURRENT, _STATE

# Loggers whose records never become telemetry: the exporter's and SDK's own (a failing export
# would otherwise log about itself into the next export), and azure-core's per-request log
# (request URLs carry blob names).
EXCLUDED_LOGGERS: Final = (
    "azure.monitor.opentelemetry",
    "opentelemetry",
    "azure.core.pipeline.policies.http_logging_policy",
)

class TelemetryLogFilter(logging.Filter):
    """On the exporting handler: drops the SDK's own records, redacts secrets and blob names.

    Mutates the record in place (later handlers see the redacted text too, which is intended:
    in Azure the console output also reaches Application Insights).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(EXCLUDED_LOGGERS):
            return False
        try:
            message = record.getMessage()
        except Exception:  # a bad %-format: let logging report it as usual
            return True
        redacted = redact(message)
        if redacted is not message:
            record.msg, record.args = redacted, None
        return True


def redact(message: str) -> str:
    out = message
    for secret in _STATE.secrets:
        if secret in out:
            out = out.replace(secret, "***")
    current = _CURRENT.get()
    if current is not None and current.blob_name:
        name = current.blob_name
        escaped = printable(name)
        if _STATE.hash_blob_names:
            # callers log the escaped form; the longer first, as it may contain the other
            for form in sorted({name, escaped}, key=len, reverse=True):
                if form in out:
                    out = out.replace(form, current.blob_label)
        elif escaped is not name and name in out:
            # A caller that logged the invocation's name verbatim: never a forged line here.
            out = out.replace(name, escaped)
    return out


def install_log_filter() -> None:
    """Attach ``TelemetryLogFilter`` to every OpenTelemetry logging handler on the root logger."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LoggingHandler) and not any(
            isinstance(f, TelemetryLogFilter) for f in handler.filters
        ):
            handler.addFilter(TelemetryLogFilter())

