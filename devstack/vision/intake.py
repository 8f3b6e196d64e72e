"""Getting the image bytes of a request: raw body or ``{"url": ...}``.

URLs are fetched only from this machine's loopback (``127.0.0.1``, ``localhost``, ``::1``), e.g.
an Azurite blob; any other host gets the service's ``InvalidImageUrl`` answer without a single
packet leaving the machine. Redirects are not followed. Bodies are read to the end (so the client
never sees a reset while still uploading) but only the first 20 MB are kept.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import httpx
from starlette.requests import Request

from devstack.vision import errors
from devstack.vision.config import MAX_IMAGE_BYTES

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


async def read_body(request: Request) -> tuple[bytes, int]:
    """The body (at most ``MAX_IMAGE_BYTES`` kept) and its full length."""
    kept = bytearray()
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if len(kept) < MAX_IMAGE_BYTES:
            kept.extend(chunk[: MAX_IMAGE_BYTES - len(kept)])
    return bytes(kept), total


def url_from_json(body: bytes) -> str:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.bad_argument("The request body is not valid JSON.") from exc
    url = document.get("url") if isinstance(document, dict) else None
    if not isinstance(url, str) or not url:
        raise errors.invalid_request("InvalidImageUrl", "Image URL is badly formatted.")
    return url


async def fetch_local_url(url: str, *, timeout_s: float) -> bytes:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.invalid_request("InvalidImageUrl", "Image URL is badly formatted.")
    if parts.hostname.lower() not in LOOPBACK_HOSTS:
        raise errors.invalid_url(
            "The local Vision emulator only fetches loopback URLs (127.0.0.1, localhost)."
        )
    try:
        async with (
            httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise errors.invalid_url(f"The URL answered HTTP {response.status_code}.")
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data.extend(chunk)
                if len(data) >= MAX_IMAGE_BYTES:
                    raise errors.image_too_large()
    except httpx.HTTPError as exc:
        raise errors.invalid_url("The URL could not be reached.") from exc
    return bytes(data)
