"""Blob name → safe, deterministic, collision-resistant result path.

A source blob ``photos/2024/cat.jpg`` maps to ``photos/2024/cat.jpg.json`` in ``results/`` or
``failed/``. Names that are not already plain (unicode, odd characters, ``..``, empty or
dot-leading segments, leading/doubled slashes, backslashes, ``~``, too long, too deep) are
cleaned and get ``~`` plus 16 hex digits of the SHA-256 of the *original* name appended, so
two different names can only collide if their hashes do. Plain names never contain ``~``, so a
cleaned name can never equal a plain one.

Pure functions only; no I/O.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

#: Characters a result path segment may keep as they are.
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9._-]")
MAX_SEGMENT_CHARS = 120
MAX_DEPTH = 16
#: The whole result path stays far below the 1,024-character blob name limit.
MAX_PATH_CHARS = 400
HASH_CHARS = 16
SUFFIX = ".json"


def _is_plain(name: str) -> bool:
    if not name or len(name) > MAX_PATH_CHARS:
        return False
    segments = name.split("/")
    if len(segments) > MAX_DEPTH:
        return False
    return all(
        len(segment) <= MAX_SEGMENT_CHARS
        and _SAFE_SEGMENT.fullmatch(segment) is not None
        and segment not in (".", "..")
        for segment in segments
    )


def _clean_segment(segment: str) -> str:
    decomposed = unicodedata.normalize("NFKD", segment)
    ascii_only = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    cleaned = _UNSAFE_CHAR.sub("_", ascii_only).lstrip(".")
    return cleaned[:MAX_SEGMENT_CHARS]


def safe_stem(blob_name: str) -> str:
    """The cleaned name without ``.json`` (see the module docstring for the rules)."""
    if _is_plain(blob_name):
        return blob_name
    digest = hashlib.sha256(blob_name.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]
    segments = [
        cleaned
        for part in re.split(r"[/\\]", blob_name)
        if part not in ("", ".", "..") and (cleaned := _clean_segment(part))
    ]
    if not segments:
        return f"_~{digest}"
    if len(segments) > MAX_DEPTH:
        tail = "_".join(segments[MAX_DEPTH - 1 :])
        segments = [*segments[: MAX_DEPTH - 1], tail]
    segments[-1] = segments[-1][: MAX_SEGMENT_CHARS - 1 - HASH_CHARS]
    stem = "/".join(segments)
    budget = MAX_PATH_CHARS - len(SUFFIX) - 1 - HASH_CHARS
    stem = stem[:budget].rstrip("/")
    return f"{stem}~{digest}"


def result_path(blob_name: str) -> str:
    """Where the result (or failure) document of ``blob_name`` is written."""
    return safe_stem(blob_name) + SUFFIX
