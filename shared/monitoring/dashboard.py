"""The local web dashboard page and the Content-Security-Policy that allows exactly its code.

The page (``static/dashboard.html``) is self-contained: one inline ``<style>`` and one inline
``<script>``. The policy names each of them by its SHA-256 (CSP level 2 hash sources) instead of
``'unsafe-inline'``, so if escaping in the page ever slipped, injected markup could neither run
a script (an inline handler, a ``<script>`` block, a ``javascript:`` URL) nor restyle the page
with a ``style`` attribute. Hashes rather than per-response nonces: the page is static, so the
policy is computed once per process, and a nonce would only add a secret to keep unguessable.

Must never: send the page with a policy computed from other bytes than the ones it sends.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

__all__ = ["DashboardPage", "content_security_policy", "dashboard_page"]

#: ``<script>`` and ``<style>`` blocks without attributes: the only inline code the page has.
_INLINE_BLOCK: Final = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)
#: Comments are left out first: a tag named in a comment is not a block.
_COMMENT: Final = re.compile(r"<!--.*?-->", re.DOTALL)
#: The dashboard fetches only its own origin; everything else is denied.
_FIXED_DIRECTIVES: Final = ("default-src 'none'", "connect-src 'self'", "img-src data:",
                            "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'")


@dataclass(frozen=True, slots=True)
class DashboardPage:
    html: str
    csp: str


def _source(block: str) -> str:
    digest = hashlib.sha256(block.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def content_security_policy(html: str) -> str:
    """The policy for ``html``: its inline scripts and styles allowed by hash, nothing else.

    A page without inline scripts (or styles) gets ``'none'`` for that directive.
    """
    sources: dict[str, list[str]] = {"script": [], "style": []}
    for match in _INLINE_BLOCK.finditer(_COMMENT.sub("", html)):
        sources[match.group(1)].append(_source(match.group(2)))
    directives = [
        _FIXED_DIRECTIVES[0],
        "script-src " + (" ".join(sources["script"]) or "'none'"),
        "style-src " + (" ".join(sources["style"]) or "'none'"),
        *_FIXED_DIRECTIVES[1:],
    ]
    return "; ".join(directives)


@functools.cache
def dashboard_page() -> DashboardPage:
    """The page, read from the package once per process, with its policy."""
    html = resources.files("shared").joinpath("static/dashboard.html").read_text("utf-8")
    return DashboardPage(html=html, csp=content_security_policy(html))
