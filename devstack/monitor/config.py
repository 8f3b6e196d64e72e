"""Settings of the local Monitor emulator, parsed once into a frozen dataclass.

Never read the environment here: the CLI (``__main__``) and tests build the config explicitly.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from devstack.monitor.limits import QueryLimits

#: The workspace id the emulator answers to unless told otherwise. GUID-shaped like a real
#: Log Analytics workspace id, and obviously not one ("...10ca1" reads "local").
DEFAULT_WORKSPACE_ID = "00000000-0000-4000-8000-0000000010ca"

#: What ``_ResourceId`` holds on every row: shaped like an Application Insights component id.
DEFAULT_RESOURCE_ID = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/local"
    "/providers/microsoft.insights/components/visionops-local"
)

#: Name of the DuckDB file inside ``state_dir``.
DB_FILENAME = "monitor.duckdb"

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class ConfigError(ValueError):
    """Raised with every problem of a config at once."""


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """Everything the emulator can be tuned with.

    ``clock`` is injectable so retention can be tested without waiting days; it must return an
    aware UTC datetime.
    """

    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    workspace_id: str = DEFAULT_WORKSPACE_ID
    retention_days: float = 30.0
    #: How often the background task deletes rows older than ``retention_days``.
    retention_interval_s: float = 3600.0
    resource_id: str = DEFAULT_RESOURCE_ID
    #: Log Analytics' per-caller query limits (``devstack.monitor.limits``).
    limits: QueryLimits = field(default_factory=QueryLimits)
    clock: Callable[[], datetime] = field(default=utc_now, compare=False)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError("invalid Monitor emulator config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        found: list[str] = []
        try:
            if not ipaddress.ip_address(self.host).is_loopback:
                found.append(f"host must be a loopback address, not {self.host!r}")
        except ValueError:
            found.append(f"host must be an IP address, not {self.host!r}")
        if not 0 <= self.port <= 65535:
            found.append(f"port must be 0..65535, not {self.port}")
        if not _GUID.match(self.workspace_id):
            found.append(f"workspace_id must be a GUID, not {self.workspace_id!r}")
        if not self.retention_days > 0:
            found.append(f"retention_days must be > 0, not {self.retention_days}")
        if not self.retention_interval_s > 0:
            found.append(f"retention_interval_s must be > 0, not {self.retention_interval_s}")
        return found

    @property
    def db_path(self) -> Path:
        return self.state_dir / DB_FILENAME
