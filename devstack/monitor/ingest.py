"""The Breeze ``/v2.1/track`` contract: request body → items → track response.

The exporter posts a JSON array of envelopes (the service also takes one object, or one
envelope per line), optionally gzip-compressed. The answer is ``{"itemsReceived",
"itemsAccepted", "errors": [{"index", "statusCode", "message"}]}``: 200 when every item was
accepted, 206 when some were (the exporter then drops the 400s and keeps retryable ones), 400
when none were. Pure functions; storing is the caller's business.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any

from devstack.monitor.envelopes import Context, EnvelopeError, map_envelope
from devstack.monitor.store import Received

#: Largest decompressed body accepted (the service caps a request well below this).
MAX_BODY_BYTES = 64 * 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"


class BodyError(ValueError):
    """The request body as a whole cannot be read (answered 400 without touching the store)."""


@dataclass(frozen=True, slots=True)
class TrackOutcome:
    status: int
    body: dict[str, Any]
    items: list[Received]


def decode_body(raw: bytes, content_encoding: str | None) -> str:
    encoding = (content_encoding or "").strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip"):
        raise BodyError(f"Content-Encoding {content_encoding!r} is not supported")
    if encoding in ("gzip", "x-gzip") or raw.startswith(_GZIP_MAGIC):
        inflater = zlib.decompressobj(wbits=31)
        try:
            raw = inflater.decompress(raw, MAX_BODY_BYTES)
        except zlib.error as exc:
            raise BodyError("body is not valid gzip") from exc
        if inflater.unconsumed_tail:
            raise BodyError("decompressed body is too large")
    if len(raw) > MAX_BODY_BYTES:
        raise BodyError("body is too large")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BodyError("body is not UTF-8") from exc


def split_items(text: str) -> list[tuple[str, Any, str | None]]:
    """``(raw_text, parsed_or_None, parse_error)`` per item: a JSON array/object or NDJSON."""
    stripped = text.strip()
    if not stripped:
        raise BodyError("body is empty")
    try:
        whole = json.loads(stripped)
    except ValueError:
        whole = None
    else:
        items = whole if isinstance(whole, list) else [whole]
        return [(json.dumps(item, ensure_ascii=False), item, None) for item in items]
    out: list[tuple[str, Any, str | None]] = []
    for line in stripped.splitlines():
        if not line.strip():
            continue
        try:
            out.append((line, json.loads(line), None))
        except ValueError:
            out.append((line, None, "Invalid JSON: the item could not be parsed."))
    return out


def track(raw_body: bytes, content_encoding: str | None, ctx: Context) -> TrackOutcome:
    """Validate and map every item of one track request."""
    try:
        parsed = split_items(decode_body(raw_body, content_encoding))
    except BodyError as exc:
        body = {"itemsReceived": 0, "itemsAccepted": 0,
                "errors": [{"index": 0, "statusCode": 400, "message": str(exc)}]}
        return TrackOutcome(400, body, [])
    received: list[Received] = []
    errors: list[dict[str, Any]] = []
    for index, (raw, item, parse_error) in enumerate(parsed):
        if parse_error is not None:
            received.append(Received(raw, None, parse_error))
            errors.append({"index": index, "statusCode": 400, "message": parse_error})
            continue
        try:
            mapped = map_envelope(item, ctx, billed_size=len(raw.encode("utf-8")))
        except EnvelopeError as exc:
            received.append(Received(raw, None, str(exc)))
            errors.append({"index": index, "statusCode": 400, "message": str(exc)})
            continue
        received.append(Received(raw, mapped))
    accepted = len(received) - len(errors)
    status = 200 if not errors else (206 if accepted else 400)
    body = {"itemsReceived": len(received), "itemsAccepted": accepted, "errors": errors}
    return TrackOutcome(status, body, received)
