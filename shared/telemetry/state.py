"""What telemetry knows about this process and the current invocation, and its safety net.

``_STATE`` is set once by ``configure()`` (``shared.telemetry.setup``); ``_CURRENT`` holds the
invocation whose request span is open (``shared.telemetry.api.invocation``), which redaction
and the pipeline observer read. ``never_raises`` is the one wrapper that keeps a telemetry
failure out of business code.

Must never: import the app beyond the floor (``shared.errors``, ``shared.settings``), or raise.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from opentelemetry.semconv._incubating.attributes.user_agent_attributes import (
    USER_AGENT_SYNTHETIC_TYPE,
)

from shared.telemetry.names import ATTR_OUTCOME, PROBE_BLOB_MARKER, SYNTHETIC_TYPE_TEST

if TYPE_CHECKING:
    from opentelemetry.trace import Span

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class Mode(StrEnum):
    """Who owns the OpenTelemetry providers in this process."""

    UNCONFIGURED = "unconfigured"
    APP = "app"  # configure_azure_monitor() called here
    WORKER = "worker"  # the Functions worker did it
    DISABLED = "disabled"  # no connection string: API calls are no-ops



@dataclass(slots=True)
class _State:
    mode: Mode = Mode.UNCONFIGURED
    hash_blob_names: bool = False
    poison_after: int = 5
    secrets: tuple[str, ...] = ()
    shutdown_timeout_s: float = 5.0
    closed: bool = False  # the providers were shut down (at exit): nothing more to flush
    lock: threading.Lock = field(default_factory=threading.Lock)


_STATE = _State()



def never_raises(func: Callable[P, R]) -> Callable[P, R | None]:
    """Telemetry never breaks the app: log (type only — messages may echo values) and go on."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # the one place a broad catch is the design
            logger.warning("telemetry: %s failed (%s); ignored", func.__qualname__,
                           type(exc).__name__)
            return None

    return wrapper


def blob_label(container: str, name: str, *, hash_names: bool | None = None) -> str:
    """What telemetry may say about a blob: its name, or ``sha256:<16 hex>`` when hashing
    (``hash_names``; by default what ``TELEMETRY_HASH_BLOB_NAMES`` set at ``configure()``)."""
    if hash_names is None:
        hash_names = _STATE.hash_blob_names
    if not hash_names:
        return name
    digest = hashlib.sha256(f"{container}/{name}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"sha256:{digest[:16]}"


def clean_attributes(
    properties: Mapping[str, object] | None,
) -> dict[str, str | bool | int | float]:
    """Attributes OpenTelemetry accepts: ``None`` dropped, anything else not a scalar as text."""
    out: dict[str, str | bool | int | float] = {}
    for key, value in (properties or {}).items():
        if value is None:
            continue
        out[str(key)] = value if isinstance(value, str | bool | int | float) else str(value)
    return out



@dataclass(slots=True)
class Invocation:
    """The request span of one invocation and what the pipeline learnt about it."""

    span: Span
    synthetic: bool = False
    blob_container: str | None = None
    blob_name: str | None = None
    outcome: str | None = None

    @property
    def blob_label(self) -> str:
        return blob_label(self.blob_container or "", self.blob_name or "",
                          hash_names=_STATE.hash_blob_names)

    @never_raises
    def set_outcome(self, outcome: str, **attributes: object) -> None:
        """Record the invocation's outcome (``pipeline.outcome``) and low-cardinality details."""
        self.outcome = outcome
        self.span.set_attributes({ATTR_OUTCOME: outcome, **clean_attributes(attributes)})

    @never_raises
    def set_attributes(self, attributes: Mapping[str, object]) -> None:
        self.span.set_attributes(clean_attributes(attributes))

    @never_raises
    def mark_synthetic(self) -> None:
        """Synthetic after all (the blob's marker is known once its properties are read): the
        request span and everything recorded in it from now on carry the synthetic marker."""
        self.synthetic = True
        self.span.set_attribute(USER_AGENT_SYNTHETIC_TYPE, SYNTHETIC_TYPE_TEST)


_CURRENT: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar(
    "visionops_invocation", default=None
)


def current_invocation() -> Invocation | None:
    return _CURRENT.get()


def is_synthetic_blob(metadata: Mapping[str, str] | None) -> bool:
    """Whether a blob's metadata carries the probe's marker (names are case-insensitive)."""
    return any(key.lower() == PROBE_BLOB_MARKER and bool(value)
               for key, value in (metadata or {}).items())



def synthetic_attributes(synthetic: bool | None) -> dict[str, str]:
    if synthetic is None:
        current = _CURRENT.get()
        synthetic = current is not None and current.synthetic
    return {USER_AGENT_SYNTHETIC_TYPE: SYNTHETIC_TYPE_TEST} if synthetic else {}

