"""Health timers: the Vision probe, the end-to-end probe and the quota check.

Thin adapters: each turns the ``func.TimerRequest`` into ``past_due`` and the invocation id and
calls one function of ``shared.probes`` / ``shared.quota``, which never raises (a failing probe
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
    from shared.probes import vision_probe_timer

    vision_probe_timer(past_due=timer.past_due, invocation_id=_invocation_id(context))


@bp.timer_trigger(arg_name="timer", schedule="%PROBE_E2E_SCHEDULE%", run_on_startup=False)
def e2e_probe(timer: func.TimerRequest, context: func.Context) -> None:
    """Upload a synthetic image and wait for its result document; one availability result."""
    from shared.probes import e2e_probe_timer

    e2e_probe_timer(past_due=timer.past_due, invocation_id=_invocation_id(context))


@bp.timer_trigger(arg_name="timer", schedule="%QUOTA_SCHEDULE%", run_on_startup=False)
def quota_check(timer: func.TimerRequest, context: func.Context) -> None:
    """Calls this month vs the tier's quota, forecast, warnings; kept for the status page."""
    from shared.quota import quota_timer

    quota_timer(past_due=timer.past_due, invocation_id=_invocation_id(context))
