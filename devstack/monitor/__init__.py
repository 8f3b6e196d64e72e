"""Local Application Insights ingestion + Log Analytics query emulator (dev only, never deployed).

The real ``azure-monitor-opentelemetry-exporter`` posts envelopes to ``/v2.1/track``; they land in
DuckDB tables named and shaped like the workspace tables (``AppRequests``, ``AppDependencies``,
``AppTraces``, ``AppExceptions``, ``AppMetrics``, ``AppEvents``, ``AppAvailabilityResults`` …).
The real ``LogsQueryClient`` queries them with KQL (run by ``duckdb-kql``) at
``/v1/workspaces/{id}/query`` and ``/v1/$batch``. See docs/monitor-emulator.md.
"""

from __future__ import annotations

from devstack.monitor.app import create_app
from devstack.monitor.config import DEFAULT_WORKSPACE_ID, ConfigError, MonitorConfig

__all__ = ["DEFAULT_WORKSPACE_ID", "ConfigError", "MonitorConfig", "create_app"]
