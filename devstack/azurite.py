"""Azurite, the storage emulator (from npm, pinned in package.json), for blobs and queues.

Only loopback, never its own telemetry (it would try the internet), and any API version: the
storage SDK sends a newer ``x-ms-version`` than Azurite knows.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from devstack.procs import LOOPBACK

REPO_ROOT = Path(__file__).resolve().parent.parent

# The documented, public development account of the storage emulator (not a secret).
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


class AzuriteNotInstalled(RuntimeError):
    """node_modules has no Azurite: run ``npm ci`` (the README commands do)."""


@dataclass(frozen=True, slots=True)
class AzuriteConfig:
    location: Path
    blob_port: int = 10000
    queue_port: int = 10001
    table_port: int = 10002
    host: str = LOOPBACK

    @property
    def blob_endpoint(self) -> str:
        return f"http://{self.host}:{self.blob_port}/{DEV_ACCOUNT}"

    @property
    def queue_endpoint(self) -> str:
        return f"http://{self.host}:{self.queue_port}/{DEV_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
            f"BlobEndpoint={self.blob_endpoint};QueueEndpoint={self.queue_endpoint};"
        )


def azurite_argv(cfg: AzuriteConfig) -> list[str]:
    script = REPO_ROOT / "node_modules" / "azurite" / "dist" / "src" / "azurite.js"
    node = shutil.which("node")
    if node is None or not script.is_file():
        raise AzuriteNotInstalled("Azurite is not installed: run `npm ci` in the repository root")
    cfg.location.mkdir(parents=True, exist_ok=True)
    return [
        node, str(script),
        "--location", str(cfg.location),
        "--blobHost", cfg.host, "--blobPort", str(cfg.blob_port),
        "--queueHost", cfg.host, "--queuePort", str(cfg.queue_port),
        "--tableHost", cfg.host, "--tablePort", str(cfg.table_port),
        "--skipApiVersionCheck", "--disableTelemetry", "--silent", "--loose",
    ]


def ensure_containers(connection_string: str, containers: list[str], queues: list[str]) -> None:
    """Create the containers and queues the app and the host need (idempotent)."""
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueServiceClient

    blobs = BlobServiceClient.from_connection_string(connection_string)
    for name in containers:
        with contextlib.suppress(ResourceExistsError):
            blobs.create_container(name)
    queue_service = QueueServiceClient.from_connection_string(connection_string)
    for name in queues:
        with contextlib.suppress(ResourceExistsError):
            queue_service.create_queue(name)
