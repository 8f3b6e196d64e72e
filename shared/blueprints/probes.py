"""Health timers: the Vision probe, the end-to-end probe and the quota check.

Thin adapters: each turns the ``func.TimerRequest`` into ``past_due`` and the invocation id and
calls one function of ``shared.ops.probes`` / ``shared.ops.quota``, which never raises (a failing
probe
records a failed availability result instead). ``context`` is annotated ``func.Context`` exactly:
the Python worker refuses to load a function whose ``context`` annotation is anything else.
Schedules are ``%SETTING%`` expressions
(``PROBE_SCHEDULE``, ``PROBE_E2E_SCHEDULE``, ``QUOTA_SCHEDULE``) and never run on start-up.
"""

from __future__ import annotations

import azure.functions as func

bp = func.Blueprint()  # type: ignore[no-untyped-call]  # azure-functions leaves __init__ untyped


def _invocation_id(context: func.Context) -> str | None:
    return context.invocation_id


@bp.timer_trigger(arg_name="timer", schedule="%PROBE_SCHEDULE%", run_on_startup=False)
def vision_probe(timer: func.TimerRequest, context: func.Context) -> None:
    """Analyse the bundled probe images and check the answer; one availability result."""
    from shared.composition import ensure_telemetry, get_probe_runtime
    from shared.ops.probes import vision_probe_timer

    ensure_telemetry()
    vision_probe_timer(past_due=timer.past_due, runtime=get_probe_runtime,
                       invocation_id=_invocation_id(context))


@bp.timer_trigger(arg_name="timer", schedule="%PROBE_E2E_SCHEDULE%", run_on_startup=False)
def e2e_probe(timer: func.TimerRequest, context: func.Context) -> None:
    """Upload a synthetic image and wait for its result document; one availability result."""
    from shared.composition import ensure_telemetry, get_probe_runtime
    from shared.ops.probes import e2e_probe_timer

    ensure_telemetry()
    e2e_probe_timer(past_due=timer.past_due, runtime=get_probe_runtime,
                    invocation_id=_invocation_id(context))


@bp.timer_trigger(arg_name="timer", schedule="%QUOTA_SCHEDULE%", run_on_startup=False)
def quota_check(timer: func.TimerRequest, context: func.Context) -> None:
    """Calls this month vs the tier's quota, forecast, warnings; kept for the status page."""
    from shared.composition import ensure_telemetry, get_quota_runtime
    from shared.ops.quota import quota_timer

    ensure_telemetry()
    quota_timer(past_due=timer.past_due, runtime=get_quota_runtime,
                invocation_id=_invocation_id(context))
