"""Run one function invocation the way the Python worker does.

Sync functions run on a ``ThreadPoolExecutor`` sized like the worker's: the app setting
``PYTHON_THREADPOOL_THREAD_COUNT`` if set, else (Python >= 3.9) no explicit limit, which is
``ThreadPoolExecutor``'s default ``min(32, cpus + 4)``. Async functions run on the host's loop.
Each invocation gets a fresh id and the host's
``Executing`` / ``Executed`` log lines. A function that raises never escapes this module: the
outcome says it failed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import azure.functions as func
from azure.functions import _abc as azf_abc

from devstack.host.loader import FunctionSpec

log = logging.getLogger("devstack.host.functions")

THREAD_COUNT_SETTING = "PYTHON_THREADPOOL_THREAD_COUNT"


def worker_thread_count(settings: Mapping[str, str]) -> int | None:
    """``max_workers`` as the worker computes it: the setting if valid, else None (3.9+)."""
    raw = settings.get(THREAD_COUNT_SETTING)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        log.warning("%s must be an integer; using the default", THREAD_COUNT_SETTING)
        return None
    if value < 1:
        log.warning("%s must be at least 1; using the default", THREAD_COUNT_SETTING)
        return None
    return value


class _TraceContext(azf_abc.TraceContext):
    def __init__(self, trace_parent: str, trace_state: str) -> None:
        self._parent = trace_parent
        self._state = trace_state

    @property
    def trace_state(self) -> str:
        return self._state

    @property
    def trace_parent(self) -> str:
        return self._parent

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _RetryContext(azf_abc.RetryContext):
    def __init__(self, retry_count: int, max_retry_count: int) -> None:
        self._count = retry_count
        self._max = max_retry_count

    @property
    def retry_count(self) -> int:
        return self._count

    @property
    def max_retry_count(self) -> int:
        return self._max

    @property
    def exception(self) -> Any:
        return None


_invocation_local = threading.local()


class InvocationContext(func.Context):
    """``func.Context`` as the worker builds it for each invocation."""

    def __init__(self, *, invocation_id: str, function_name: str, function_directory: str,
                 trace_parent: str, retry_count: int = 0, max_retry_count: int = 0) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._function_directory = function_directory
        self._trace = _TraceContext(trace_parent, "")
        self._retry = _RetryContext(retry_count, max_retry_count)

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return _invocation_local

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self) -> azf_abc.TraceContext:
        return self._trace

    @property
    def retry_context(self) -> azf_abc.RetryContext:
        return self._retry


@dataclass(frozen=True, slots=True)
class Outcome:
    invocation_id: str
    succeeded: bool
    duration_ms: float
    result: Any = None
    error: str | None = None


class Invoker:
    """Calls functions with worker-like threading and host-like logging."""

    def __init__(self, script_root: str, settings: Mapping[str, str],
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self._script_root = script_root
        self._clock = clock
        max_workers = worker_thread_count(settings)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="func-sync")
        self.max_workers: int = self._pool._max_workers
        # Only touched on the event loop thread (done callbacks run there).
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def active(self) -> int:
        return self._active

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)

    async def invoke(self, spec: FunctionSpec, args: dict[str, Any], *, reason: str,
                     retry_count: int = 0, max_retry_count: int = 0) -> Outcome:
        invocation_id = str(uuid.uuid4())
        context = InvocationContext(
            invocation_id=invocation_id, function_name=spec.name,
            function_directory=self._script_root,
            trace_parent=f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
            retry_count=retry_count, max_retry_count=max_retry_count)
        call_args = dict(args)
        if spec.requires_context:
            call_args["context"] = context
        for binding in spec.bindings:
            # Bindings the local host does not implement still get their parameter (as None).
            binding_name = str(binding.get("name"))
            if binding_name in spec.parameters:
                call_args.setdefault(binding_name, None)
        log.info("Executing '%s' (Reason='%s', Id=%s)", spec.log_name, reason, invocation_id)
        started = self._clock()
        loop = asyncio.get_running_loop()
        work: asyncio.Future[Any]
        if spec.is_async:
            work = asyncio.ensure_future(spec.func(**call_args))
        else:
            work = loop.run_in_executor(self._pool, _run_sync, invocation_id, spec.func,
                                        call_args)
        self._begin()
        work.add_done_callback(self._end)
        try:
            # Shielded: cancelling the caller (shutdown) must not hide a still-running invocation.
            result = await asyncio.shield(work)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a function's failure is an outcome, not a crash
            duration = (self._clock() - started) * 1000
            log.error("Executed '%s' (Failed, Id=%s, Duration=%dms)\n%s", spec.log_name,
                      invocation_id, duration,
                      "".join(traceback.format_exception(exc)).rstrip())
            return Outcome(invocation_id, False, duration, error=f"{type(exc).__name__}: {exc}")
        duration = (self._clock() - started) * 1000
        log.info("Executed '%s' (Succeeded, Id=%s, Duration=%dms)", spec.log_name, invocation_id,
                 duration)
        return Outcome(invocation_id, True, duration, result=result)

    def _begin(self) -> None:
        self._active += 1
        self._idle.clear()

    def _end(self, _: asyncio.Future[Any]) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no invocation runs; False if ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=max(timeout, 0.0))
        except TimeoutError:
            return False
        return True


def _run_sync(invocation_id: str, function: Callable[..., Any], args: dict[str, Any]) -> Any:
    _invocation_local.invocation_id = invocation_id
    try:
        return function(**args)
    finally:
        _invocation_local.invocation_id = None
