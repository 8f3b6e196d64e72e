"""The main job on the local stack: start it, upload the samples, watch them being analysed.

Each sample is uploaded to the images container; its result (or failure) document is found by
the same naming rule the app uses and counts only when it records the ETag just uploaded, so a
stale document from an earlier run never passes for a new one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack import stack

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
UPLOAD_PREFIX = "samples/"


@dataclass(slots=True)
class Tracked:
    blob_name: str
    etag: str
    document: dict[str, Any] | None = None
    container: str | None = None


def sample_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def upload_samples(connection_string: str, container: str, files: list[Path]) -> list[Tracked]:
    from azure.storage.blob import BlobServiceClient

    from shared.analysis.results import normalize_etag

    client = BlobServiceClient.from_connection_string(connection_string)
    images = client.get_container_client(container)
    tracked: list[Tracked] = []
    for path in files:
        name = UPLOAD_PREFIX + path.name
        props = images.get_blob_client(name).upload_blob(path.read_bytes(), overwrite=True)
        tracked.append(Tracked(blob_name=name, etag=normalize_etag(str(props["etag"])) or ""))
    return tracked


def poll_documents(
    connection_string: str,
    tracked: list[Tracked],
    containers: tuple[str, str],
) -> None:
    """Fill in each item's document once one for its uploaded ETag exists."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.blob import BlobServiceClient

    from shared.analysis.results import normalize_etag
    from shared.naming import result_path

    client = BlobServiceClient.from_connection_string(connection_string)
    for item in tracked:
        if item.document is not None:
            continue
        for container in containers:
            blob = client.get_blob_client(container, result_path(item.blob_name))
            try:
                doc = json.loads(blob.download_blob().readall())
            except ResourceNotFoundError:
                continue
            if normalize_etag(doc.get("source", {}).get("etag")) == item.etag:
                item.document, item.container = doc, container
                break


def describe(doc: dict[str, Any]) -> str:
    """One line of what the analysis found, computed from the result document."""
    if doc.get("outcome") != "analyzed":
        error = doc.get("error") or {}
        return f"{error.get('class', '?')}: {error.get('reason', '?')}"
    analysis = doc.get("analysis") or {}
    parts = []
    meta = analysis.get("metadata") or {}
    if meta:
        parts.append(f"{meta.get('width')}x{meta.get('height')}")
    people = (analysis.get("peopleResult") or {}).get("values")
    if people is not None:
        confident = sum(1 for p in people if float(p.get("confidence", 0)) >= 0.5)
        parts.append(f"{confident} {'person' if confident == 1 else 'people'}")
    blocks = (analysis.get("readResult") or {}).get("blocks")
    if blocks is not None:
        lines = [line["text"] for b in blocks for line in b.get("lines", [])]
        parts.append(f"{len(lines)} text lines" + (f' ("{lines[0]}"…)' if lines else ""))
    return ", ".join(parts)


def run(
    samples: Path,
    *,
    opts: stack.StackOptions,
    deadline_s: float = 600.0,
    wait_forever: Callable[[], None] | None = None,
) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console()
    state = stack.up(opts, report=lambda msg: console.print(f"[dim]{msg}[/]"))
    endpoints = state.endpoints(opts.state_dir)
    conn = str(endpoints["storage_connection_string"])
    files = sample_files(samples)
    tracked = upload_samples(conn, "images", files)
    console.print(f"uploaded {len(tracked)} images to the [bold]images[/] container")

    with Progress(TextColumn("analysing"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("analysing", total=len(tracked))
        give_up = time.monotonic() + deadline_s
        while time.monotonic() < give_up:
            poll_documents(conn, tracked, ("results", "failed"))
            done = sum(1 for t in tracked if t.document is not None)
            progress.update(task, completed=done)
            if done == len(tracked):
                break
            threading.Event().wait(0.5)

    table = Table(title="Analysis of samples/")
    for column in ("image", "outcome", "found", "attempts", "ms"):
        table.add_column(column)
    for item in tracked:
        doc = item.document
        if doc is None:
            table.add_row(item.blob_name, "[red]pending[/]", "no document before the deadline",
                          "", "")
            continue
        outcome = str(doc.get("outcome"))
        colour = "green" if outcome == "analyzed" else "yellow"
        total = (doc.get("timings_ms") or {}).get("total")
        table.add_row(item.blob_name, f"[{colour}]{outcome}[/]", describe(doc),
                      str(doc.get("attempts", "")), f"{total:.0f}" if total else "")
    console.print(table)
    pending = sum(1 for t in tracked if t.document is None)
    base, key = endpoints["functions_url"], endpoints["function_key"]
    console.print("results in container [bold]results[/], rejections in [bold]failed[/]")
    console.print(f"dashboard: {base}/api/dashboard?code={key}", soft_wrap=True)
    console.print(f"status:    {base}/api/status?code={key}", soft_wrap=True)
    console.print(f"health:    {base}/api/health")
    console.print("logs:      python -m devstack logs host")
    if wait_forever is None:
        return 1 if pending else 0
    console.print("the stack keeps running; press Ctrl-C to stop it")
    try:
        wait_forever()
    except KeyboardInterrupt:
        console.print("stopping the stack")
    finally:
        stack.down(opts.state_dir, report=lambda msg: console.print(f"[dim]{msg}[/]"))
    return 1 if pending else 0
