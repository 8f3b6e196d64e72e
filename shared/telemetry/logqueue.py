"""The log queue: callers only enqueue a redacted copy; a listener thread exports it.

Puts the OpenTelemetry logging handlers of the root logger behind a ``QueueHandler`` +
``QueueListener`` pair (``LogQueue.install``), in batches, bounded (``LOG_QUEUE_MAX``; beyond it
records are dropped and counted). ``configure()`` installs it when this process owns the
providers (``Mode.APP``); ``force_flush``/``shutdown`` drain or stop it first.

Must never: block a caller on export, or lose a record's span correlation or redaction.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry.instrumentation.logging.handler import LoggingHandler

from shared.telemetry.redaction import EXCLUDED_LOGGERS, redact

logger = logging.getLogger(__name__)

#: Private record attribute carrying the caller's OpenTelemetry context across the queue.
_CONTEXT_ATTR: Final = "_visionops_otel_context"
#: Records waiting for the listener thread; beyond this they are dropped (and counted), like
#: the SDK's own batch queues do, so a logging storm cannot grow memory without bound.
LOG_QUEUE_MAX: Final = 10_000
#: The listener hands records on in batches: once this many wait, or this long after the first.
#: A burst of logging then finishes before the listener competes with it for the GIL (the SDK's
#: batch processors work the same way; their defaults are 512 records / 5 s).
LOG_QUEUE_BATCH: Final = 512
LOG_QUEUE_DELAY_S: Final = 0.1


class _Drained:
    """Queue marker: the listener sets ``done`` once every record before it was handled."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class _EnqueueHandler(logging.handlers.QueueHandler):
    """Caller side: what ``TelemetryLogFilter`` does (redaction needs the caller's invocation),
    stamp the OpenTelemetry context, enqueue. No more.

    The OpenTelemetry ``LoggingHandler`` translates each record into an SDK log record (attribute
    copy, context lookup, processor hand-off); behind this handler that work runs on the
    listener thread instead of the invocation's.
    """

    def __init__(self, q: queue.SimpleQueue[Any], maxsize: int, wake: threading.Event) -> None:
        super().__init__(q)
        self._q = q  # typed: the base class only knows put_nowait
        self._wake = wake
        self.maxsize = maxsize
        self.dropped = 0
        self.on_flush: Callable[[], object] | None = None

    def flush(self) -> None:
        """``Handler.flush``: hand what is queued to the exporters (a host flushing every
        handler on shutdown, ``logging.shutdown``)."""
        if self.on_flush is not None:
            self.on_flush()

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock (the queue is thread-safe) and the filter inlined: this runs on every
        # record of every invocation.
        if record.name.startswith(EXCLUDED_LOGGERS):
            return False
        if self.filters and not self.filter(record):
            return False
        try:
            self.enqueue(self.prepare(record))
        except Exception:  # what Handler.emit does: logging reports it, the caller goes on
            self.handleError(record)
        return True

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        message = record.getMessage()  # a bad %-format raises: reported like any handler's
        redacted = redact(message)
        if redacted is not message:  # later handlers see the redacted text too (as the filter)
            record.msg, record.args = redacted, None
        # A shallow copy for the queue (other handlers keep the original): the message frozen
        # now, since the arguments may change before the listener runs; exc_info kept as objects
        # (the queue is in-process, nothing is pickled), so it still becomes AppExceptions.
        out = logging.LogRecord.__new__(logging.LogRecord)
        out.__dict__.update(record.__dict__)
        out.msg = out.message = redacted
        out.args = None
        # The whole (immutable) context: trace id, span id, flags and anything else in it.
        out.__dict__[_CONTEXT_ATTR] = otel_context.get_current()
        return out

    def enqueue(self, record: logging.LogRecord) -> None:
        waiting = self._q.qsize()
        if waiting >= self.maxsize:
            self.dropped += 1
            if self.dropped == 1:  # once; a nested record is dropped too, so no recursion
                logger.warning("telemetry: log queue full (%d); records dropped", self.maxsize)
            return
        self._q.put_nowait(record)
        if waiting >= LOG_QUEUE_BATCH and not self._wake.is_set():
            self._wake.set()


class _ExportListener(logging.handlers.QueueListener):
    """Listener thread: re-attach the caller's context, then let the exporting handlers emit."""

    def __init__(self, q: queue.SimpleQueue[Any], handlers: Sequence[logging.Handler],
                 wake: threading.Event) -> None:
        super().__init__(q, *handlers, respect_handler_level=True)
        self._q = q
        self._wake = wake
        self._batch_left = 0

    def dequeue(self, block: bool) -> Any:
        if self._batch_left > 0:  # the rest of a batch: already there, no waiting
            self._batch_left -= 1
            return self._q.get(block)
        first = self._q.get(block)
        if isinstance(first, logging.LogRecord):  # not a drain marker or the stop sentinel
            self._wake.wait(LOG_QUEUE_DELAY_S)
            self._wake.clear()
        self._batch_left = self._q.qsize()
        return first

    def handle(self, record: Any) -> None:
        if isinstance(record, _Drained):
            record.done.set()
            return
        context = record.__dict__.pop(_CONTEXT_ATTR, None)
        token = otel_context.attach(context) if context is not None else None
        try:
            super().handle(record)
        finally:
            if token is not None:
                otel_context.detach(token)


class LogQueue:
    """Puts exporting logging handlers behind a ``QueueHandler`` + ``QueueListener``.

    Callers pay what the seed's ``AzureLogHandler`` paid, plus redaction: a copy and an enqueue.
    Records keep their span correlation (the context is stamped on the caller, re-attached on
    the listener), the redaction and exclusions of ``TelemetryLogFilter`` (applied on the
    caller's side) and ``exc_info``. ``drain()`` (also the handler's ``flush()``) waits for
    everything queued so far; at exit ``shutdown()`` stops the queue before the providers.
    """

    def __init__(self, handlers: Sequence[logging.Handler], *, maxsize: int = LOG_QUEUE_MAX
                 ) -> None:
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._wake = threading.Event()
        self.handler = _EnqueueHandler(q, maxsize, self._wake)
        self.handler.on_flush = self.drain
        self.listener = _ExportListener(q, handlers, self._wake)
        self._lock = threading.Lock()
        self._running = False

    @classmethod
    def install(cls, root: logging.Logger) -> LogQueue | None:
        """Move the OpenTelemetry logging handlers of ``root`` behind a queue; start it."""
        exporting = [h for h in root.handlers if isinstance(h, LoggingHandler)]
        if not exporting:
            return None
        log_queue = cls(exporting)
        log_queue.start()
        for handler in exporting:
            root.removeHandler(handler)
        root.addHandler(log_queue.handler)
        return log_queue

    @property
    def dropped(self) -> int:
        return self.handler.dropped

    def start(self) -> None:
        with self._lock:
            if not self._running:
                self.listener.start()
                self._running = True

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every record enqueued before this call was handed to the exporters."""
        with self._lock:
            if not self._running:
                return True
            marker = _Drained()
            self.listener.queue.put_nowait(marker)
            self._wake.set()
        return marker.done.wait(timeout_s)

    def stop(self) -> None:
        """Hand every queued record on, then end the listener thread (idempotent).

        Never blocks for long: the exporting handler only appends to the SDK's batch queue.
        """
        with self._lock:
            if not self._running:
                return
            self._running = False
            self._wake.set()  # no batching delay for what is left
            self.listener.stop()

