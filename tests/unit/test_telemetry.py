"""shared.telemetry with the OpenTelemetry SDK's in-memory exporters (no Azure, no patching).

The global providers are set once for this process; each test clears the exporters.
"""

from __future__ import annotations

import http.server
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry._logs import get_logger_provider, set_logger_provider
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    InMemoryLogRecordExporter,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from devstack.monitor.ingest import decode_body, split_items
from shared import telemetry as t
from shared.analysis.attempts import VisionAttempt
from shared.analysis.observer import TelemetryObserver, outcome_measures
from shared.analysis.pipeline import AnalysisOutcome, BlobInput, Outcome
from shared.analysis.preprocessing import PreprocessRecord
from shared.errors import ErrorClass, ThrottledError, classify
from shared.settings import Settings, secret_values

REPO_ROOT = Path(__file__).resolve().parents[2]
SPANS = InMemorySpanExporter()
LOGS = InMemoryLogRecordExporter()
METRICS = InMemoryMetricReader()


def _install_providers() -> None:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(SPANS))
        trace.set_tracer_provider(provider)
    if not isinstance(get_logger_provider(), LoggerProvider):
        log_provider = LoggerProvider()
        log_provider.add_log_record_processor(SimpleLogRecordProcessor(LOGS))
        set_logger_provider(log_provider)
    if not isinstance(metrics.get_meter_provider(), MeterProvider):
        metrics.set_meter_provider(MeterProvider(metric_readers=[METRICS]))


_install_providers()

SOURCE = BlobInput(container="images", name="cats/tom.jpg", data=b"x" * 1234, etag='"0x1"')
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    SPANS.clear()
    LOGS.clear()
    handler = LoggingHandler(logger_provider=get_logger_provider())
    handler.addFilter(t.TelemetryLogFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        t.state._STATE.hash_blob_names = False
        t.state._STATE.secrets = ()


def spans() -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in SPANS.get_finished_spans():
        out.setdefault(span.name, []).append(span)
    return out


def logs() -> list[Any]:
    return [r.log_record for r in LOGS.get_finished_logs()]


def attempt(n: int, status: int, **kw: Any) -> VisionAttempt:
    return VisionAttempt(attempt=n, features=("read", "smartCrops"), image_bytes=1234,
                         duration_ms=12.5, limiter_wait_ms=1.0, status_code=status, **kw)


RECORD = PreprocessRecord(
    detected_format="jpeg", original_width=100, original_height=80, original_bytes=1234,
    final_format="jpeg", final_width=100, final_height=80, final_bytes=1200, orientation=1,
    reencoded=False, steps=("sniff:jpeg",), duration_ms=3.0, stage_ms={"validate": 2.5})


def analysed(attempts: int = 2) -> AnalysisOutcome:
    return AnalysisOutcome(status=Outcome.ANALYZED, container="images", name=SOURCE.name,
                           etag="0x1", document="results/cats/tom.jpg.json", attempts=attempts,
                           duration_ms=40.0, preprocessing=RECORD)


def test_invocation_is_a_server_span_under_the_host_trace_with_faas_attributes() -> None:
    observer = TelemetryObserver("http://127.0.0.1:7081")
    with t.invocation("analyze_image", trigger=t.Trigger.DATASOURCE, invocation_id="inv-1",
                      trace_parent=TRACEPARENT, blob=("images", SOURCE.name)):
        observer.on_started(SOURCE)
        observer.on_preprocessed(SOURCE, RECORD)
        observer.on_vision_attempt(SOURCE, attempt(1, 429, error_class=ErrorClass.THROTTLED,
                                                   reason="throttled", retry_after_s=1.0,
                                                   backoff_s=1.0))
        observer.on_vision_attempt(SOURCE, attempt(2, 200))
        observer.on_document_written(SOURCE, "results/cats/tom.jpg.json", 4.0)
        observer.on_outcome(SOURCE, analysed())
    got = spans()
    [request] = got["analyze_image"]
    assert request.kind is SpanKind.SERVER
    assert format(request.context.trace_id, "032x") == TRACEPARENT.split("-")[1]
    assert request.attributes is not None
    assert request.attributes["faas.trigger"] == "datasource"
    assert request.attributes["faas.invocation_id"] == "inv-1"
    assert request.attributes["faas.document.name"] == "cats/tom.jpg"
    assert request.attributes[t.ATTR_OUTCOME] == "analyzed"
    assert request.attributes[t.ATTR_ATTEMPTS] == 2
    assert request.status.status_code is StatusCode.UNSET

    throttled, ok = sorted(got[t.SPAN_VISION_ANALYZE],
                           key=lambda s: s.attributes[t.ATTR_VISION_ATTEMPT])  # type: ignore[index]
    for dep in (throttled, ok):
        assert dep.kind is SpanKind.CLIENT
        assert dep.parent is not None and dep.parent.span_id == request.context.span_id
        assert dep.end_time is not None and dep.start_time is not None
        assert (dep.end_time - dep.start_time) == pytest.approx(12.5e6, abs=1e3)
    assert throttled.attributes is not None and ok.attributes is not None
    assert throttled.attributes["http.response.status_code"] == 429
    assert throttled.attributes[t.ATTR_VISION_THROTTLED] is True
    assert throttled.status.status_code is StatusCode.ERROR
    assert ok.attributes[t.ATTR_VISION_FEATURES] == "read,smartCrops"
    assert ok.attributes["server.address"] == "127.0.0.1"
    [write] = got[t.SPAN_DOCUMENT_WRITE]
    assert write.attributes is not None
    assert write.attributes[t.ATTR_DOCUMENT_CONTAINER] == "results"
    assert "cats/tom.jpg" not in json.dumps(dict(write.attributes))

    [event] = [r for r in logs() if (r.attributes or {}).get(t.CUSTOM_EVENT_NAME)]
    assert event.attributes[t.CUSTOM_EVENT_NAME] == t.EVENT_ANALYZED
    assert event.trace_id == request.context.trace_id


def test_exception_marks_the_request_failed_and_passes_through_unchanged() -> None:
    observer = TelemetryObserver("http://127.0.0.1:7081", poison_after_attempts=2)
    error = ThrottledError("429", reason="throttled")
    for _ in range(2):
        with pytest.raises(ThrottledError) as raised, t.invocation(
            "analyze_image", trigger=t.Trigger.DATASOURCE, blob=("images", SOURCE.name)
        ):
            observer.on_retryable_failure(SOURCE, error, classify(error))
            raise error
        assert raised.value is error
    requests = spans()["analyze_image"]
    assert [s.attributes[t.ATTR_OUTCOME] for s in requests] == ["failed", "failed"]  # type: ignore[index]
    assert all(s.status.status_code is StatusCode.ERROR for s in requests)
    assert any(e.name == "exception" for e in requests[0].events)
    events = [r.attributes[t.CUSTOM_EVENT_NAME] for r in logs()  # type: ignore[index]
              if (r.attributes or {}).get(t.CUSTOM_EVENT_NAME)]
    assert events == [t.EVENT_POISONED]  # on the second (= last) failure


def test_plain_logging_inside_an_invocation_is_correlated() -> None:
    with t.invocation("analyze_image", trigger=t.Trigger.DATASOURCE) as inv:
        logging.getLogger("shared.analysis.pipeline").warning("blob %s rejected", "x.jpg")
    [record] = [r for r in logs() if r.body == "blob x.jpg rejected"]
    assert record.trace_id == inv.span.get_span_context().trace_id
    assert record.span_id == inv.span.get_span_context().span_id
    assert spans()["analyze_image"][0].attributes[t.ATTR_OUTCOME] == t.OUTCOME_COMPLETED  # type: ignore[index]


def test_hashing_blob_names_and_redacting_secrets() -> None:
    t.state._STATE.hash_blob_names = True
    t.state._STATE.secrets = ("super-secret-vision-key",)
    label = t.blob_label("images", SOURCE.name, hash_names=True)
    assert label.startswith("sha256:") and SOURCE.name not in label
    with t.invocation("analyze_image", trigger=t.Trigger.DATASOURCE, blob=("images", SOURCE.name)):
        logging.getLogger("shared.analysis.pipeline").warning(
            "blob images/%s failed with key %s", SOURCE.name, "super-secret-vision-key")
        TelemetryObserver("http://v").on_outcome(SOURCE, analysed())
    [record] = [r for r in logs() if "failed with key" in str(r.body)]
    assert record.body == f"blob images/{label} failed with key ***"
    assert spans()["analyze_image"][0].attributes["faas.document.name"] == label  # type: ignore[index]
    dump = json.dumps([dict(r.attributes or {}) for r in logs()])
    assert SOURCE.name not in dump


def test_the_probe_key_and_the_pipeline_key_are_redacted_from_settings() -> None:
    # the probe's key lives in its own nested VisionSettings: redaction must still find it
    settings = Settings.from_env({
        "VISION_ENDPOINT": "http://127.0.0.1:9",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "VISION_KEY": "pipeline-vision-key-1", "PROBE_VISION_KEY": "probe-vision-key-2"})
    t.state._STATE.secrets = secret_values(settings)
    logging.getLogger("shared.ops.probes").warning(
        "keys %s and %s", settings.probes.vision.key, settings.vision.key)
    [record] = [r for r in logs() if "keys" in str(r.body)]
    assert record.body == "keys *** and ***"


def test_sdk_and_exporter_loggers_never_become_telemetry() -> None:
    logging.getLogger("azure.monitor.opentelemetry.exporter.export._base").warning("retrying")
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").warning("url")
    assert logs() == []


def test_synthetic_blobs_are_tagged_everywhere() -> None:
    probe = BlobInput(container="images", name="anywhere/probe.png", data=b"x",
                      metadata={t.PROBE_BLOB_MARKER: "pipeline-e2e"})
    with t.invocation("analyze_image", trigger=t.Trigger.DATASOURCE,
                      blob=("images", probe.name),
                      synthetic=t.is_synthetic_blob(probe.metadata)) as inv:
        assert inv.synthetic
        observer = TelemetryObserver("http://v")
        observer.on_vision_attempt(probe, attempt(1, 200))
        observer.on_outcome(probe, analysed())
    for span in SPANS.get_finished_spans():
        assert span.attributes is not None
        assert span.attributes["user_agent.synthetic.type"] == "test"
    [event] = logs()
    assert event.attributes["user_agent.synthetic.type"] == "test"


@pytest.mark.parametrize(("metadata", "synthetic"), [
    ({"visionopsprobe": "pipeline-e2e"}, True),
    ({"VisionOpsProbe": "pipeline-e2e"}, True),  # metadata names are case-insensitive
    ({"visionopsprobe": ""}, False),
    ({"owner": "customer"}, False),
    ({}, False),
    (None, False),
])
def test_only_the_probe_marker_makes_a_blob_synthetic(
    metadata: dict[str, str] | None, synthetic: bool
) -> None:
    assert t.is_synthetic_blob(metadata) is synthetic


def test_a_user_blob_under_the_probe_folder_counts_as_user_traffic() -> None:
    user = BlobInput(container="images", name="synthetic/probe/customer-upload-1.jpg", data=b"x",
                     metadata={"owner": "customer"})
    with t.invocation("analyze_image", trigger=t.Trigger.DATASOURCE, blob=("images", user.name),
                      synthetic=t.is_synthetic_blob(user.metadata)) as inv:
        assert not inv.synthetic
        TelemetryObserver("http://v").on_outcome(user, analysed())
    finished = SPANS.get_finished_spans()
    assert finished
    for span in finished:
        assert span.attributes is not None
        assert "user_agent.synthetic.type" not in span.attributes
    [event] = logs()
    assert "user_agent.synthetic.type" not in event.attributes


def test_track_availability_carries_the_exporter_contract() -> None:
    t.track_availability("pipeline", False, 1234.5, message="timeout", run_location="westeurope")
    [record] = logs()
    a = record.attributes
    assert a[t.AVAILABILITY_NAME] == "pipeline"
    assert a[t.AVAILABILITY_SUCCESS] is False
    assert a[t.AVAILABILITY_DURATION] == "0.00:00:01.234500"
    assert a[t.AVAILABILITY_RUN_LOCATION] == "westeurope"
    assert a[t.AVAILABILITY_MESSAGE] == "timeout"
    assert a[t.AVAILABILITY_ID]
    assert a["user_agent.synthetic.type"] == "test"


def test_metrics_are_recorded() -> None:
    observer = TelemetryObserver("http://v")
    with t.invocation("analyze_image", trigger=t.Trigger.DATASOURCE):
        observer.on_started(SOURCE)
        observer.on_preprocessed(SOURCE, RECORD)
        observer.on_vision_attempt(SOURCE, attempt(1, 429, error_class=ErrorClass.THROTTLED))
        observer.on_vision_attempt(SOURCE, attempt(2, 200))
        observer.on_outcome(SOURCE, analysed())
    data = METRICS.get_metrics_data()
    assert data is not None
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert names >= {t.METRIC_ANALYSIS_DURATION, t.METRIC_PREPROCESS_DURATION,
                     t.METRIC_PREPROCESS_STAGE_DURATION, t.METRIC_IMAGE_BYTES_IN,
                     t.METRIC_IMAGE_BYTES_OUT, t.METRIC_OUTCOMES,
                     t.METRIC_VISION_RETRIES, t.METRIC_VISION_THROTTLES, t.METRIC_LIMITER_WAIT}



def test_preprocessing_stages_are_a_histogram_by_stage() -> None:
    record = replace(RECORD, reencoded=True, duration_ms=9.0,
                     stage_ms={"decode": 5.0, "resample": 3.0, "encode": 1.0})
    TelemetryObserver("http://v").on_preprocessed(SOURCE, record)
    data = METRICS.get_metrics_data()
    assert data is not None
    points = [p for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
              if m.name == t.METRIC_PREPROCESS_STAGE_DURATION for p in m.data.data_points]
    sums = {p.attributes[t.ATTR_PREPROCESS_STAGE]: (p.count, p.sum) for p in points}
    # the reader is shared by the module's tests; only this one records these three stages
    assert sums["decode"] == (1, 5.0)
    assert sums["resample"] == (1, 3.0)
    assert sums["encode"] == (1, 1.0)

def test_observer_failures_are_swallowed(monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> t.Instruments:
        raise RuntimeError("exporter on fire")

    monkeypatch.setattr(t, "instruments", broken)  # our own seam, not the SDK's
    observer = TelemetryObserver("http://v")
    with caplog.at_level(logging.WARNING, logger="shared.telemetry"):
        assert observer.on_started(SOURCE) is None  # type: ignore[func-returns-value]
    assert "RuntimeError" in caplog.text and "on fire" not in caplog.text


# --------------------------------------------------------------------------- log records
# The exporting handler sits on the root logger as the distro puts it there, with
# TelemetryLogFilter on it (the ``clean`` fixture wires it the same way ``configure()`` does).


def test_a_record_keeps_the_span_it_was_logged_in() -> None:
    with t.invocation("analyze_image", trigger=t.Trigger.DATASOURCE) as inv:
        logging.getLogger("shared.analysis.pipeline").warning("blob %s rejected", "x.jpg")
        with t.get_tracer().start_as_current_span("child") as child:
            logging.getLogger("shared.analysis.pipeline").warning("inside the child")
    logging.getLogger("shared.analysis.pipeline").warning("outside any span")
    got = {str(r.body): r for r in logs()}
    assert len(got) == 3
    request = inv.span.get_span_context()
    assert got["blob x.jpg rejected"].trace_id == request.trace_id
    assert got["blob x.jpg rejected"].span_id == request.span_id
    assert int(got["blob x.jpg rejected"].trace_flags) == int(request.trace_flags)
    assert got["inside the child"].span_id == child.get_span_context().span_id
    assert got["outside any span"].trace_id == 0


def test_records_are_redacted_before_export() -> None:
    t.state._STATE.hash_blob_names = True
    t.state._STATE.secrets = ("super-secret-vision-key",)
    label = t.blob_label("images", SOURCE.name, hash_names=True)
    args = ["super-secret-vision-key"]
    with t.invocation("analyze_image", trigger=t.Trigger.DATASOURCE, blob=("images", SOURCE.name)):
        logging.getLogger("shared.analysis.pipeline").warning(
            "blob %s failed with key %s", SOURCE.name, args[0])
        logging.getLogger("shared.analysis.pipeline").warning("arguments %s", args)
        args.append("changed later")  # the message is the one of when it was logged
    logging.getLogger("azure.monitor.opentelemetry.exporter.export._base").warning("retrying")
    bodies = sorted(str(r.body) for r in logs())
    assert bodies == ["arguments ['***']", f"blob {label} failed with key ***"]


def test_an_exception_record_carries_its_type_and_stack() -> None:
    def fail() -> None:
        raise ValueError("bad image header")

    with t.invocation("analyze_image", trigger=t.Trigger.DATASOURCE) as inv:
        try:
            fail()
        except ValueError:
            logging.getLogger("shared.analysis.pipeline").exception("analysis failed")
    [record] = logs()
    attributes = record.attributes or {}
    assert attributes["exception.type"] == "ValueError"
    assert attributes["exception.message"] == "bad image header"
    assert "in fail" in str(attributes["exception.stacktrace"])
    assert record.span_id == inv.span.get_span_context().span_id


class _HungLogExporter(InMemoryLogRecordExporter):
    """A log export that does not return until the test releases it (an endpoint that hangs)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def export(self, batch: Any) -> Any:
        self.entered.set()
        self.release.wait(60)
        return super().export(batch)


def test_a_hung_exporter_neither_blocks_nor_breaks_a_log_call() -> None:
    hung = _HungLogExporter()
    provider = LoggerProvider(shutdown_on_exit=False)
    # A small queue, exported as soon as one record waits: the export hangs from the first one.
    provider.add_log_record_processor(BatchLogRecordProcessor(
        hung, schedule_delay_millis=1, max_queue_size=50, max_export_batch_size=1))
    handler = LoggingHandler(logger_provider=provider)
    handler.addFilter(t.TelemetryLogFilter())
    log = logging.getLogger("test.exporter.down")
    log.propagate = False
    log.addHandler(handler)
    try:
        log.warning("first")
        deadline = time.monotonic() + 10
        while not hung.entered.is_set() and time.monotonic() < deadline:
            hung.entered.wait(0.05)
        assert hung.entered.is_set()  # the exporter thread is stuck in an export
        # Far more records than the SDK's queue holds: the surplus is dropped, nothing waits.
        for i in range(2_000):
            log.warning("record %d", i)
        started = time.monotonic()
        assert t.shutdown(0.2, providers=[provider]) is False  # the exit flush stays bounded
        assert time.monotonic() - started < 5.0
    finally:
        log.removeHandler(handler)
        log.propagate = True
        hung.release.set()
    deadline = time.monotonic() + 10  # the released export finishes on the SDK's thread
    while not hung.get_finished_logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    exported = [str(r.log_record.body) for r in hung.get_finished_logs()]
    assert exported and exported[0] == "first"
    assert len(exported) <= 1 + 50 + 1  # bounded by the SDK's queue, not by what was logged


# --------------------------------------------------------------------------- configuration

BASE = {"VISION_ENDPOINT": "http://127.0.0.1:7081",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true"}
LOCAL_CS = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://127.0.0.1:9/"
AZURE_CS = ("InstrumentationKey=11111111-1111-1111-1111-111111111111;"
            "IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/")


def test_telemetry_settings_parse_and_report_problems() -> None:
    s = Settings.from_env({**BASE, "APPLICATIONINSIGHTS_CONNECTION_STRING": LOCAL_CS,
                           "TELEMETRY_HASH_BLOB_NAMES": "true",
                           "LOGS_QUERY_ENDPOINT": "http://127.0.0.1:9/v1",
                           "LOGS_WORKSPACE_ID": "ws"})
    assert s.telemetry.hash_blob_names and s.telemetry.ingestion_is_loopback
    assert s.logs_query.is_loopback and s.logs_query.workspace_id == "ws"
    assert LOCAL_CS not in repr(s)
    with pytest.raises(Exception, match="TELEMETRY_SAMPLING_RATIO") as err:
        Settings.from_env({**BASE, "TELEMETRY_SAMPLING_RATIO": "2",
                           "TELEMETRY_HASH_BLOB_NAMES": "maybe"})
    assert "TELEMETRY_HASH_BLOB_NAMES" in str(err.value)


def test_the_crash_loss_window_is_set_through_the_sdks_own_variables() -> None:
    defaults = Settings.from_env(BASE).telemetry
    assert t.export_environment(defaults) == {
        "OTEL_BSP_SCHEDULE_DELAY": "1000", "OTEL_BLRP_SCHEDULE_DELAY": "1000",
        "OTEL_METRIC_EXPORT_INTERVAL": "15000"}
    assert defaults.shutdown_timeout_s == 5.0
    tuned = Settings.from_env({**BASE, "OTEL_BSP_SCHEDULE_DELAY": "200",
                               "TELEMETRY_SHUTDOWN_TIMEOUT_SECONDS": "2.5"}).telemetry
    assert t.export_environment(tuned)["OTEL_BSP_SCHEDULE_DELAY"] == "200"
    assert tuned.shutdown_timeout_s == 2.5
    with pytest.raises(Exception, match="OTEL_BLRP_SCHEDULE_DELAY") as err:
        Settings.from_env({**BASE, "OTEL_BLRP_SCHEDULE_DELAY": "soon",
                           "OTEL_METRIC_EXPORT_INTERVAL": "0",
                           "TELEMETRY_SHUTDOWN_TIMEOUT_SECONDS": "600"})
    assert "OTEL_METRIC_EXPORT_INTERVAL" in str(err.value)
    assert "TELEMETRY_SHUTDOWN_TIMEOUT_SECONDS" in str(err.value)


def test_options_are_local_only_where_they_should_be() -> None:
    local = t.azure_monitor_options(Settings.from_env(
        {**BASE, "APPLICATIONINSIGHTS_CONNECTION_STRING": LOCAL_CS}).telemetry)
    azure = t.azure_monitor_options(Settings.from_env(
        {**BASE, "APPLICATIONINSIGHTS_CONNECTION_STRING": AZURE_CS,
         "TELEMETRY_ROLE_NAME": "visionops"}).telemetry)
    assert local["enable_live_metrics"] is False and azure["enable_live_metrics"] is True
    assert local["enable_performance_counters"] is False
    assert "enable_performance_counters" not in azure
    for options in (local, azure):
        assert options["sampling_ratio"] == 1.0
        assert options["instrumentation_options"]["azure_sdk"] == {"enabled": False}
        assert options["storage_min_retry_interval"] == 60
    assert azure["resource"].attributes["service.name"] == "visionops"


def _python(code: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=120, check=False, env={"PATH": "/usr/bin:/bin", **(env or {})})
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_importing_function_app_configures_nothing() -> None:
    out = _python("""
        import json, sys
        import function_app
        from opentelemetry import trace
        print(json.dumps({"distro": "azure.monitor.opentelemetry" in sys.modules,
                          "provider": type(trace.get_tracer_provider()).__name__}))
    """, {"APPLICATIONINSIGHTS_CONNECTION_STRING": LOCAL_CS})
    assert out == {"distro": False, "provider": "ProxyTracerProvider"}


def test_configure_once_locally_and_never_when_the_worker_owns_it() -> None:
    out = _python(f"""
        import json, logging, os
        from shared import telemetry
        from shared.settings import Settings, secret_values
        base = {BASE!r}
        worker = telemetry.configure(Settings.from_env({{**base,
            "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true",
            "APPLICATIONINSIGHTS_CONNECTION_STRING": {LOCAL_CS!r}}}))
        telemetry.state._STATE.mode = telemetry.Mode.UNCONFIGURED
        s = Settings.from_env({{**base, "APPLICATIONINSIGHTS_CONNECTION_STRING": {LOCAL_CS!r}}})
        first = telemetry.configure(s)
        second = telemetry.configure(s)
        from opentelemetry.instrumentation.logging.handler import LoggingHandler
        exporting = [h for h in logging.getLogger().handlers if isinstance(h, LoggingHandler)]
        print(json.dumps({{"worker": worker, "first": first, "second": second,
                          "on_root": len(exporting),
                          "filters": [[type(f).__name__ for f in h.filters] for h in exporting],
                          "statsbeat": os.environ.get(
                              "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL"),
                          "exemplars": os.environ.get("OTEL_METRICS_EXEMPLAR_FILTER")}}))
    """)
    # The distro's exporting handler stays on the root logger, redacting filter on it, once.
    assert out == {"worker": "worker", "first": "app", "second": "app", "on_root": 1,
                   "filters": [["TelemetryLogFilter"]], "statsbeat": "true",
                   "exemplars": "always_off"}


def test_no_connection_string_means_no_exporter() -> None:
    out = _python(f"""
        import json
        from shared import telemetry
        from shared.settings import Settings, secret_values
        mode = telemetry.configure(Settings.from_env({BASE!r}))
        telemetry.track_event("x", {{"a": 1}})
        with telemetry.invocation("f", trigger=telemetry.Trigger.TIMER):
            pass
        print(json.dumps({{"mode": mode}}))
    """)
    assert out == {"mode": "disabled"}


# --------------------------------------------------------------------------- shutdown

HOUR_MS = 3_600_000  # a batch delay no test waits for: only a flush can export


class _Metrics(MetricExporter):
    """In-memory metric exporter (the SDK ships an in-memory reader, not an exporter)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def export(self, metrics_data: Any, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        for resource in metrics_data.resource_metrics:
            for scope in resource.scope_metrics:
                self.names.extend(metric.name for metric in scope.metrics)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


class _HungExporter(SpanExporter):
    """An export that does not return until the test releases it (an endpoint that hangs)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def export(self, spans: Any) -> SpanExportResult:
        self.entered.set()
        self.release.wait(60)
        return SpanExportResult.SUCCESS


class _BrokenProvider:
    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        raise RuntimeError("exporter bug")


def test_shutdown_flushes_what_the_batch_processors_hold() -> None:
    spans_out, logs_out, metrics_out = (InMemorySpanExporter(), InMemoryLogRecordExporter(),
                                        _Metrics())
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    tracer_provider.add_span_processor(
        BatchSpanProcessor(spans_out, schedule_delay_millis=HOUR_MS))
    logger_provider = LoggerProvider(shutdown_on_exit=False)
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(logs_out, schedule_delay_millis=HOUR_MS))
    meter_provider = MeterProvider(
        metric_readers=[PeriodicExportingMetricReader(metrics_out,
                                                      export_interval_millis=HOUR_MS)],
        shutdown_on_exit=False)

    for i in range(3):
        tracer_provider.get_tracer("test").start_span(f"request {i}").end()
    logger_provider.get_logger("test").emit(body="last words")
    meter_provider.get_meter("test").create_counter("pipeline.outcomes").add(3)
    # held by the batch processors: a kill now would lose all of it
    assert spans_out.get_finished_spans() == () and logs_out.get_finished_logs() == ()
    assert metrics_out.names == []

    assert t.shutdown(5.0, providers=[tracer_provider, meter_provider, logger_provider])

    assert sorted(s.name for s in spans_out.get_finished_spans()) == [
        "request 0", "request 1", "request 2"]
    assert [str(r.log_record.body) for r in logs_out.get_finished_logs()] == ["last words"]
    assert "pipeline.outcomes" in metrics_out.names
    # shut down: later spans are refused, not queued for an export that never comes
    tracer_provider.get_tracer("test").start_span("after shutdown").end()
    assert len(spans_out.get_finished_spans()) == 3


def test_shutdown_is_bounded_when_an_export_hangs_and_never_raises() -> None:
    hung = _HungExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(hung, schedule_delay_millis=HOUR_MS))
    provider.get_tracer("test").start_span("stuck").end()
    started = time.monotonic()
    try:
        assert t.shutdown(0.2, providers=[provider]) is False
        elapsed = time.monotonic() - started
        assert hung.entered.is_set()  # the export was reached and is still hanging
    finally:
        hung.release.set()
    assert elapsed < 5.0  # the bound held (0.2 s), not the exporter's own timeout

    # a provider that raises does not stop the next one from being flushed
    spans_out = InMemorySpanExporter()
    healthy = TracerProvider(shutdown_on_exit=False)
    healthy.add_span_processor(BatchSpanProcessor(spans_out, schedule_delay_millis=HOUR_MS))
    healthy.get_tracer("test").start_span("kept").end()
    assert t.shutdown(5.0, providers=[_BrokenProvider(), healthy]) is False
    assert [s.name for s in spans_out.get_finished_spans()] == ["kept"]


class _Ingestion(http.server.BaseHTTPRequestHandler):
    """A loopback ingestion endpoint: records the envelopes, or never answers (``hang``)."""

    received: list[dict[str, Any]]
    hang: threading.Event | None = None

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.hang is not None:
            self.hang.wait(30)
            return
        items = [item for _, item, _ in split_items(
            decode_body(raw, self.headers.get("Content-Encoding")))]
        self.received.extend(items)
        body = json.dumps({"itemsReceived": len(items), "itemsAccepted": len(items),
                           "errors": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def ingestion() -> Iterator[tuple[type[_Ingestion], str]]:
    handler = type("Handler", (_Ingestion,), {"received": [], "hang": None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        if handler.hang is not None:
            handler.hang.set()
        server.shutdown()
        server.server_close()


_EXIT_SCRIPT = """
    import atexit, json, time
    marks = {}
    # registered first, so it runs last: after every exit handler telemetry registered
    atexit.register(lambda: print(json.dumps(
        {"exit_handlers_s": round(time.monotonic() - marks["end"], 3), **marks})))
    import logging
    from shared import telemetry
    from shared.settings import Settings, secret_values
    marks["mode"] = telemetry.configure(Settings.from_env(ENV))
    with telemetry.invocation("analyze_image", trigger=telemetry.Trigger.DATASOURCE):
        logging.getLogger("shared.analysis.pipeline").warning("the last record before exit")
    marks["end"] = time.monotonic()
"""


def _exit_run(endpoint: str, tmp_path: Path, **extra: str) -> dict[str, Any]:
    env = {**BASE, "APPLICATIONINSIGHTS_CONNECTION_STRING":
           f"InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint={endpoint}",
           # an hour: nothing is exported on a schedule, only the exit hook can send it
           "OTEL_BSP_SCHEDULE_DELAY": "60000", "OTEL_BLRP_SCHEDULE_DELAY": "60000",
           "OTEL_METRIC_EXPORT_INTERVAL": "600000",
           "TELEMETRY_STORAGE_DIRECTORY": str(tmp_path / "buffer"), **extra}
    return _python(f"ENV = {env!r}\n" + textwrap.dedent(_EXIT_SCRIPT))


def test_a_normal_exit_flushes_to_the_ingestion_endpoint(
    ingestion: tuple[type[_Ingestion], str], tmp_path: Path
) -> None:
    handler, endpoint = ingestion
    # What is checked is that the exit hook sends everything, not how fast: a generous bound
    # keeps a loaded box from cutting the export short (the bound itself is the next test's).
    out = _exit_run(endpoint, tmp_path, TELEMETRY_SHUTDOWN_TIMEOUT_SECONDS="60")
    assert out["mode"] == "app"
    kinds = Counter(item["data"]["baseType"] for item in handler.received)
    requests = [item["data"]["baseData"]["name"] for item in handler.received
                if item["data"]["baseType"] == "RequestData"]
    messages = [item["data"]["baseData"]["message"] for item in handler.received
                if item["data"]["baseType"] == "MessageData"]
    # (the worker process's own earlier exporters may still deliver to a reused loopback port:
    # only this run's request is counted)
    assert requests.count("analyze_image") == 1, kinds
    assert "the last record before exit" in messages
    assert kinds["MetricData"] >= 1  # the final metric collection went out too


def test_exit_is_bounded_when_the_endpoint_hangs(
    ingestion: tuple[type[_Ingestion], str], tmp_path: Path
) -> None:
    handler, endpoint = ingestion
    handler.hang = threading.Event()
    out = _exit_run(endpoint, tmp_path, TELEMETRY_SHUTDOWN_TIMEOUT_SECONDS="1")
    # Our bound (1 s) and not the exporter's network timeout (10 s per export) nor the SDK's
    # own exit handlers (up to 30 s per processor), which were taken over.
    assert 0.9 <= out["exit_handlers_s"] < 5.0, out


def test_an_analysed_image_carries_its_descriptors_outputs_and_model_version() -> None:
    from dataclasses import replace

    from shared.analysis.descriptors import ImageDescriptors
    from shared.analysis.outputs import OutputSummary

    descriptors = ImageDescriptors(brightness=0.42, contrast=0.2, sharpness=2.5, saturation=0.3,
                                   aspect_ratio=1.25, megapixels=0.008, format="jpeg",
                                   camera_model=None)
    outcome = replace(analysed(), preprocessing=replace(RECORD, descriptors=descriptors),
                      model_version="2023-10-01",
                      output=OutputSummary(ocr_lines=1, ocr_words=2, word_confidence_mean=0.9,
                                           word_confidence_min=0.8, people=1,
                                           people_confidence_max=0.7,
                                           smart_crop_area_share=0.5))
    observer = TelemetryObserver("http://127.0.0.1:7081")
    with t.invocation("analyze_image", trigger=t.Trigger.DATASOURCE, blob=("images", SOURCE.name)):
        observer.on_outcome(SOURCE, outcome)
    [request] = spans()["analyze_image"]
    [event] = [r for r in logs() if (r.attributes or {}).get(t.CUSTOM_EVENT_NAME)]
    record = request.attributes
    assert record is not None
    assert record["pipeline.image.brightness"] == 0.42
    assert record["pipeline.image.sharpness"] == 2.5
    assert record["pipeline.image.source_format"] == "jpeg"
    assert "pipeline.image.camera_model" not in record  # absent, not "None"
    assert record[t.ATTR_OUTPUT_WORD_CONFIDENCE_MIN] == 0.8
    assert record[t.ATTR_OUTPUT_PEOPLE_CONFIDENCE] == 0.7
    assert record[t.ATTR_OUTPUT_CROP_SHARE] == 0.5
    assert record[t.ATTR_MODEL_VERSION] == "2023-10-01"
    assert set(t.IMAGE_DESCRIPTOR_ATTRIBUTES) == set(descriptors.as_dict())
    # The queries read the measures from AppRequests only: the event carries the outcome alone.
    measures = {k for k, v in outcome_measures(outcome).items() if v is not None}
    assert len(measures) >= 15
    assert measures <= set(record)
    assert not measures & set(event.attributes or {})
    assert (event.attributes or {})[t.ATTR_OUTCOME] == "analyzed"
