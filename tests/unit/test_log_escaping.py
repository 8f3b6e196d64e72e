"""Blob names in logs: escaped wherever they are written, so a name can never forge a log line.

A hostile name carries a newline followed by what the host writes for a finished invocation;
written verbatim it would add a "succeeded" line of its own to the host log and to AppTraces.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devstack.host.__main__ import CONTINUATION, LOG_FORMAT, OneEntryFormatter
from shared import telemetry
from shared.analysis.pipeline import process_blob
from shared.errors import ThrottledError
from shared.naming import printable
from tests.support.fakes import MemoryStore
from tests.support.pipeline import FakeAnalyzer, blob, make_deps

FORGED = "Executed 'Functions.analyze_image' (Succeeded, Id=FAKE, Duration=1ms)"
HOSTILE = f"uploads/cat.jpg\n2026-01-01 00:00:00,000 INFO devstack.host.invoker: {FORGED}\r\x1b[2K"
#: Anything that ends a line or rewrites the terminal, as ``str.splitlines`` and terminals see it.
LINE_BREAKING = re.compile("[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029\x1b]")


@pytest.mark.parametrize(("raw", "escaped"), [
    ("cats/tom.jpg", "cats/tom.jpg"),
    ("a\nb", "a\\nb"),
    ("a\r\nb\tc", "a\\r\\nb\\tc"),
    ("\x00\x1b[31m\x7f", "\\x00\\x1b[31m\\x7f"),
    ("next\x85line", "next\\x85line"),
    ("line\u2028sep\u2029para", "line\\u2028sep\\u2029para"),
    ("gpj.\u202eexe", "gpj.\\u202eexe"),  # a right-to-left override disguises the extension
    ("bad\udcffbyte", "bad\\udcffbyte"),
    ("é 日本 back\\slash", "é 日本 back\\slash"),  # printable text stays as it is
])
def test_printable_escapes_what_could_end_or_disguise_a_line(raw: str, escaped: str) -> None:
    assert printable(raw) == escaped


def test_printable_returns_plain_text_itself() -> None:
    name = "photos/2024/cat.jpg"
    assert printable(name) is name


@settings(derandomize=True, database=None, max_examples=300)
@given(st.text(alphabet=st.characters(codec=None), max_size=80))
def test_printable_output_is_one_line_and_idempotent(text: str) -> None:
    out = printable(text)
    assert LINE_BREAKING.search(out) is None
    assert len(out.splitlines()) <= 1
    assert printable(out) == out
    out.encode("utf-8")  # no lone surrogate left to break a log handler's encoding


# --------------------------------------------------------------------------- the app's logs


def test_pipeline_logs_escape_the_name_and_documents_keep_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="shared")
    store = MemoryStore()
    analysed = process_blob(blob(name=HOSTILE), make_deps(store))  # analysed, then duplicate
    process_blob(blob(name=HOSTILE), make_deps(store))
    rejected = process_blob(blob(name=HOSTILE + "2", data=b""), make_deps(store))
    with pytest.raises(ThrottledError):
        process_blob(blob(name=HOSTILE + "3"),
                     make_deps(store, FakeAnalyzer([ThrottledError("429", retry_after=1.0)])))
    about_the_blob = [m for r in caplog.records if "uploads/cat.jpg" in (m := r.getMessage())]
    assert len(about_the_blob) == 3  # duplicate, rejected, not processed
    for message in about_the_blob:
        assert LINE_BREAKING.search(message) is None, message
        assert printable(HOSTILE) in message
    assert analysed.document is not None and rejected.document is not None
    analysed_doc, rejected_doc = store.doc("results", HOSTILE), store.doc("failed", HOSTILE + "2")
    assert analysed_doc is not None and rejected_doc is not None
    assert analysed_doc["source"]["name"] == HOSTILE  # the document keeps the real name
    assert rejected_doc["source"]["name"] == HOSTILE + "2"


@pytest.fixture
def telemetry_state() -> Iterator[None]:
    saved = telemetry.state._STATE.hash_blob_names
    try:
        yield
    finally:
        telemetry.state._STATE.hash_blob_names = saved


def _filtered(message: str, *args: object) -> str:
    record = logging.LogRecord("shared.somewhere", logging.INFO, __file__, 1, message, args, None)
    assert telemetry.TelemetryLogFilter().filter(record)
    return record.getMessage()


@pytest.mark.usefixtures("telemetry_state")
def test_telemetry_filter_escapes_the_invocations_name_logged_verbatim() -> None:
    telemetry.state._STATE.hash_blob_names = False
    with telemetry.invocation("analyze_image", trigger=telemetry.Trigger.DATASOURCE,
                              blob=("images", HOSTILE)):
        assert _filtered("careless %s", HOSTILE) == f"careless {printable(HOSTILE)}"
        assert _filtered("careful %s", printable(HOSTILE)) == f"careful {printable(HOSTILE)}"
    assert _filtered("outside %s", "a\nb") == "outside a\nb"  # no invocation: not a blob name


@pytest.mark.usefixtures("telemetry_state")
def test_telemetry_filter_hashes_both_forms_of_the_name() -> None:
    telemetry.state._STATE.hash_blob_names = True
    with telemetry.invocation("analyze_image", trigger=telemetry.Trigger.DATASOURCE,
                              blob=("images", HOSTILE)) as inv:
        label = inv.blob_label
        assert label.startswith("sha256:")
        assert _filtered("a %s", HOSTILE) == f"a {label}"
        assert _filtered("b %s", printable(HOSTILE)) == f"b {label}"


# --------------------------------------------------------------------------- the host's log


def _host_log(*records: logging.LogRecord) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(OneEntryFormatter(LOG_FORMAT))
    for record in records:
        handler.handle(record)
    return out.getvalue()


def test_host_log_is_one_entry_per_record() -> None:
    try:
        raise ValueError(f"cannot open {HOSTILE}")
    except ValueError as exc:
        failed = logging.LogRecord("devstack.host.invoker", logging.ERROR, __file__, 1,
                                   "Executed '%s' (Failed, Id=%s)", ("Functions.f", "1"),
                                   (type(exc), exc, exc.__traceback__))
    records = [
        logging.LogRecord("devstack.host.invoker", logging.INFO, __file__, 1,
                          "Executing '%s' (Reason='%s', Id=%s)",
                          ("Functions.analyze_image", f"New blob detected: {HOSTILE}", "2"), None),
        logging.LogRecord("devstack.host", logging.INFO, __file__, 1,
                          "Host started\nFunctions:\n%s",
                          ("  f: blobTrigger",), None),
        failed,
    ]
    text = _host_log(*records)
    lines = text.splitlines()
    entries = [line for line in lines if not line.startswith(CONTINUATION)]
    assert len(entries) == len(records), text
    assert not [line for line in lines if FORGED in line and not line.startswith(CONTINUATION)
                and "Reason=" not in line]
    assert "\x1b" not in text
    assert "Traceback (most recent call last):" in text  # the traceback is still there, indented
    assert f"{CONTINUATION}  f: blobTrigger" in lines
