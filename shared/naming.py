"""Blob name → safe, deterministic, collision-resistant result path, and → safe log text.

A source blob ``photos/2024/cat.jpg`` maps to ``photos/2024/cat.jpg.json`` in ``results/`` or
``failed/``. Names that are not already plain (unicode, odd characters, ``..``, empty or
dot-leading segments, leading/doubled slashes, backslashes, ``~``, too long, too deep) are
cleaned and get ``~`` plus 16 hex digits of the SHA-256 of the *original* name appended, so
two different names can only collide if their hashes do. Plain names never contain ``~``, so a
cleaned name can never equal a plain one.

``printable`` is the other half of a name's safety: the text to put in a log line. A blob name
may hold any character, newlines and escape sequences included, and a name written verbatim
could forge a log line of its own.

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

#: What ``printable`` escapes: C0/C1 controls and DEL, line and paragraph separators, the
#: bidirectional overrides (they reorder how a line reads) and lone surrogates (from undecodable
#: bytes). Not the backslash: escaping twice must equal escaping once, so each layer that logs
#: (the app, the host's formatter) may escape without knowing whether another did.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e"
                          "\u2066-\u2069\ud800-\udfff]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


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


def printable(text: str) -> str:
    """``text`` for a log line: every character that could end or disguise a line escaped.

    ``\\n``, ``\\r`` and ``\\t`` as in Python, others as ``\\xNN`` or ``\\uNNNN``; idempotent.
    Text without such characters is returned as it is (the blob's document keeps the real name).
    """
    if _UNPRINTABLE.search(text) is None:
        return text
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def result_path(blob_name: str) -> str:
    """Where the result (or failure) document of ``blob_name`` is written."""
    return safe_stem(blob_name) + SUFFIX
