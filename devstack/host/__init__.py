"""Local Azure Functions host for the Python v2 programming model (local-only, never deployed).

Loads ``function_app.py`` and drives its blob, timer and HTTP triggers the way the Functions host
and the Python worker do; see ``docs/local-host.md`` for what it reproduces and what differs.
"""

from __future__ import annotations

from devstack.host.host import HOST_VERSION, Host, HostOptions
from devstack.host.settings import HostConfigError, HostJson

__all__ = ["HOST_VERSION", "Host", "HostConfigError", "HostJson", "HostOptions"]
