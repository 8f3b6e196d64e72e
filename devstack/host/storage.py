"""Storage connections for triggers, resolved from app settings like the real host.

A binding's ``connection`` names an app setting holding a connection string (an empty name
means ``AzureWebJobsStorage``; the ``AzureWebJobs<name>`` form is accepted too).
``UseDevelopmentStorage=true`` means the storage emulator on its default ports. Identity-based
connections (``<name>__serviceUri``) cannot be used against the emulator and are reported as a
configuration error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from devstack.azurite import DEV_ACCOUNT, DEV_KEY
from devstack.host.settings import HostConfigError

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueServiceClient

HOSTS_CONTAINER = "azure-webjobs-hosts"
DEFAULT_CONNECTION = "AzureWebJobsStorage"

DEVELOPMENT_STORAGE = (
    f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
    f"BlobEndpoint=http://127.0.0.1:10000/{DEV_ACCOUNT};"
    f"QueueEndpoint=http://127.0.0.1:10001/{DEV_ACCOUNT};"
    f"TableEndpoint=http://127.0.0.1:10002/{DEV_ACCOUNT};"
)


def connection_string(connection: str | None, settings: Mapping[str, str], *,
                      function: str = "host") -> str:
    """The connection string behind a binding's ``connection`` setting name."""
    name = connection or DEFAULT_CONNECTION
    for candidate in (name, f"AzureWebJobs{name}"):
        value = settings.get(candidate)
        if value:
            return DEVELOPMENT_STORAGE if _is_dev_storage(value) else value
    if any(key.startswith(f"{name}__") for key in settings):
        raise HostConfigError(
            f"function '{function}': connection '{name}' is identity-based ({name}__...); "
            f"locally set '{name}' to a connection string (e.g. UseDevelopmentStorage=true)")
    raise HostConfigError(
        f"function '{function}': the connection app setting '{name}' is not defined")


def _is_dev_storage(value: str) -> bool:
    parts = {k.strip().lower(): v.strip().lower()
             for k, _, v in (p.partition("=") for p in value.split(";") if p.strip())}
    return parts.get("usedevelopmentstorage") == "true"


def blob_service(conn: str) -> BlobServiceClient:
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(conn)


def queue_service(conn: str) -> QueueServiceClient:
    from azure.storage.queue import QueueServiceClient

    return QueueServiceClient.from_connection_string(conn)
