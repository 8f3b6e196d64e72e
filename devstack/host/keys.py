"""Function and master keys, kept in ``<state-dir>/keys.json`` (created on first start).

Like the real host: a request passes a key as the ``code`` query parameter or the
``x-functions-key`` header; a function key satisfies FUNCTION level, the master key satisfies every
level (and is the only key for ADMIN level and the ``/admin`` API). Keys are never logged.

Keys are compared as UTF-8 bytes in constant time: ``hmac.compare_digest`` refuses a ``str`` with
non-ASCII characters (a ``TypeError``, i.e. a 500 for ``code=%C3%A9``), and a presented key is
whatever the caller sent. Every malformed key is simply a key that matches nothing.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

KEYS_FILE = "keys.json"

ANONYMOUS = "anonymous"
FUNCTION = "function"
ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class HostKeys:
    master_key: str
    function_keys: Mapping[str, str] = field(default_factory=dict)

    @property
    def default_function_key(self) -> str:
        return self.function_keys.get("default", "")

    @classmethod
    def load_or_create(cls, state_dir: Path) -> HostKeys:
        path = state_dir / KEYS_FILE
        if path.is_file():
            document = json.loads(path.read_text(encoding="utf-8"))
            return cls(master_key=str(document["masterKey"]),
                       function_keys={str(k): str(v)
                                      for k, v in document.get("functionKeys", {}).items()})
        keys = cls(master_key=secrets.token_urlsafe(32),
                   function_keys={"default": secrets.token_urlsafe(32)})
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"masterKey": keys.master_key,
                                   "functionKeys": dict(keys.function_keys)}, indent=2),
                       encoding="utf-8")
        tmp.chmod(0o600)
        tmp.replace(path)
        return keys

    def is_master(self, presented: str | None) -> bool:
        return bool(presented) and _same_key(str(presented), self.master_key)

    def authorizes(self, level: str, presented: str | None) -> bool:
        """Whether ``presented`` satisfies ``level`` (anonymous, function or admin)."""
        level = level.lower()
        if level == ANONYMOUS:
            return True
        if not presented:
            return False
        if self.is_master(presented):
            return True
        if level == FUNCTION:
            return any(_same_key(presented, key) for key in self.function_keys.values())
        return False


def _same_key(presented: str, key: str) -> bool:
    # surrogatepass: a lone surrogate (from an undecodable escape) is still bytes, never an error.
    return hmac.compare_digest(presented.encode("utf-8", "surrogatepass"),
                               key.encode("utf-8", "surrogatepass"))
