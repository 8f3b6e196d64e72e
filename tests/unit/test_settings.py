from __future__ import annotations

import dataclasses
import functools
import json
import re
import typing
from pathlib import Path

import pytest

from shared.settings import (
    F0_CALLS_PER_SECOND,
    Settings,
    SettingsError,
    VisionTier,
    get_settings,
    secret_values,
)

BASE = {
    "VISION_ENDPOINT": "http://127.0.0.1:7081",
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
}


def test_minimal_settings_use_local_defaults() -> None:
    s = Settings.from_env(BASE)
    assert s.vision.features == ("read", "people", "smartCrops")
    assert s.vision.key is None
    assert s.vision.tier is VisionTier.S1
    assert s.vision.rate_limit_per_second == 10.0
    assert s.pipeline.containers == ("images", "results", "failed", "parked")
    assert (s.pipeline.images_container, s.pipeline.results_container,
            s.pipeline.failed_container) == (
        "images",
        "results",
        "failed",
    )
    assert s.storage.connection_string == "UseDevelopmentStorage=true"
    assert not s.storage.uses_identity


def test_all_problems_reported_at_once() -> None:
    env = {
        "VISION_FEATURES": "read,colour",
        "VISION_TIER": "S9",
        "VISION_TIMEOUT_SECONDS": "soon",
        "VISION_MAX_RETRIES": "-1",
        "PREPROCESS_MAX_DIMENSION": "20000",
        "IMAGES_CONTAINER": "Bad_Name",
    }
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    problems = "\n".join(info.value.problems)
    for key in (
        "VISION_ENDPOINT",
        "AzureWebJobsStorage",
        "VISION_FEATURES",
        "VISION_TIER",
        "VISION_TIMEOUT_SECONDS",
        "VISION_MAX_RETRIES",
        "PREPROCESS_MAX_DIMENSION",
        "IMAGES_CONTAINER",
    ):
        assert key in problems
    assert len(info.value.problems) == 8
    assert info.value.reason == "invalid_settings"


def test_features_are_canonicalised_and_deduplicated() -> None:
    s = Settings.from_env({**BASE, "VISION_FEATURES": " READ, smartcrops ,Caption,read"})
    assert s.vision.features == ("read", "smartCrops", "caption")


def test_f0_tier_rate_and_explicit_override() -> None:
    assert Settings.from_env({**BASE, "VISION_TIER": "f0"}).vision.rate_limit_per_second == (
        F0_CALLS_PER_SECOND
    )
    s = Settings.from_env({**BASE, "VISION_TIER": "S1", "VISION_RATE_LIMIT_PER_SECOND": "19.5"})
    assert s.vision.rate_limit_per_second == 19.5


def test_identity_based_storage() -> None:
    env = {
        "VISION_ENDPOINT": "https://acct.cognitiveservices.azure.com/",
        "AzureWebJobsStorage__blobServiceUri": "https://acct.blob.core.windows.net",
        "AzureWebJobsStorage__queueServiceUri": "https://acct.queue.core.windows.net",
        "AzureWebJobsStorage__clientId": "00000000-0000-0000-0000-000000000001",
    }
    s = Settings.from_env(env)
    assert s.vision.endpoint == "https://acct.cognitiveservices.azure.com"
    assert s.storage.uses_identity
    assert s.storage.blob_service_uri == "https://acct.blob.core.windows.net"
    assert s.storage.queue_service_uri == "https://acct.queue.core.windows.net"
    assert s.storage.client_id == "00000000-0000-0000-0000-000000000001"


def test_account_name_form_derives_uris() -> None:
    s = Settings.from_env(
        {**BASE, "AzureWebJobsStorage": "", "AzureWebJobsStorage__accountName": "acct"}
    )
    assert s.storage.blob_service_uri == "https://acct.blob.core.windows.net"


def test_secrets_never_in_repr() -> None:
    s = Settings.from_env(
        {**BASE, "VISION_KEY": "super-secret-key", "AzureWebJobsStorage": "AccountKey=abc123=="}
    )
    assert "super-secret-key" not in repr(s)
    assert "abc123" not in repr(s)


def test_containers_must_differ_and_backoff_order() -> None:
    env = {
        **BASE,
        "RESULTS_CONTAINER": "images",
        "VISION_BACKOFF_BASE_SECONDS": "5",
        "VISION_BACKOFF_MAX_SECONDS": "1",
    }
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert len(info.value.problems) == 2


def test_settings_are_frozen_and_slotted() -> None:
    s = Settings.from_env(BASE)
    with pytest.raises(AttributeError):
        s.vision.endpoint = "x"  # type: ignore[misc]
    assert not hasattr(s, "__dict__")


def test_example_local_settings_parse_and_cover_every_setting() -> None:
    example = Path(__file__).parents[2] / "local.settings.json.example"
    values = json.loads(example.read_text())["Values"]
    s = Settings.from_env(values)
    assert s.vision.endpoint == "http://127.0.0.1:7081"
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    documented = set(values)
    for key in (
        "VISION_FEATURES",
        "VISION_TIER",
        "VISION_RATE_LIMIT_PER_SECOND",
        "VISION_TIMEOUT_SECONDS",
        "VISION_MAX_RETRIES",
        "VISION_BACKOFF_BASE_SECONDS",
        "VISION_BACKOFF_MAX_SECONDS",
        "PREPROCESS_MAX_DIMENSION",
        "PREPROCESS_JPEG_QUALITY",
        "PREPROCESS_MAX_PIXELS",
        "IMAGES_CONTAINER",
        "RESULTS_CONTAINER",
        "FAILED_CONTAINER",
        "VISION_KEY",
    ):
        assert key in documented


def test_get_settings_reads_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    for key, value in BASE.items():
        monkeypatch.setenv(key, value)
    first = get_settings()
    monkeypatch.setenv("VISION_ENDPOINT", "http://other:1")
    assert get_settings() is first
    get_settings.cache_clear()


def _all_fields(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field[object]]]:
    found: list[tuple[str, dataclasses.Field[object]]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        found.append((prefix + f.name, f))
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            found.extend(_all_fields(hint, prefix + f.name + "."))
    return found


def test_every_secret_looking_setting_is_declared_secret() -> None:
    # redaction is derived from secret(); a key or connection string declared without it
    # would reach logs, so the names themselves are checked here
    fields_ = _all_fields(Settings)
    secret_like = [name for name, _ in fields_
                   if re.search(r"(^|_)(key|connection_string|password|token|secret)$",
                                name.rsplit(".", 1)[-1])]
    assert len(secret_like) >= 4  # vision, probe, storage, telemetry
    unmarked = [name for name, f in fields_ if name in secret_like and not f.metadata.get("redact")]
    assert unmarked == []


#: Every field declared ``secret()``, nested groups included, and the app setting it comes from.
SECRET_SETTINGS = {
    "vision.key": ("VISION_KEY", "vision-key-0123456789"),
    "probes.vision.key": ("PROBE_VISION_KEY", "probe-key-9876543210"),
    "storage.connection_string": (
        "AzureWebJobsStorage",
        "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=storage-account-key==;"
        "BlobEndpoint=http://127.0.0.1:1/a"),
    "telemetry.connection_string": (
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
        "IngestionEndpoint=http://127.0.0.1:2/"),
}


def test_secret_values_cover_every_secret_setting() -> None:
    declared = sorted(name for name, f in _all_fields(Settings) if f.metadata.get("redact"))
    assert declared == sorted(SECRET_SETTINGS)  # a new secret() field is listed here first
    s = Settings.from_env({**BASE, **dict(SECRET_SETTINGS.values())})
    values = secret_values(s)
    for path, (_, raw) in SECRET_SETTINGS.items():
        value = functools.reduce(getattr, path.split("."), s)
        assert value == raw and value in values, path
    assert "storage-account-key==" in values  # a key part of a connection string, too
    assert list(values) == sorted(values, key=len, reverse=True)  # longest first: no partials
    assert "a" not in values  # short values would redact ordinary words


@pytest.mark.parametrize(("raw", "folder"), [
    (None, "synthetic/probe/"),
    ("probes/e2e/", "probes/e2e/"),
    ("probes", "probes/"),  # a folder, so a sibling such as 'probes-of-mine/' is not inside
])
def test_probe_e2e_prefix_is_a_folder(raw: str | None, folder: str) -> None:
    env = BASE if raw is None else {**BASE, "PROBE_E2E_PREFIX": raw}
    assert Settings.from_env(env).probes.e2e_prefix == folder


@pytest.mark.parametrize("raw", ["/probes/", "pro\nbes/"])
def test_bad_probe_e2e_prefix_is_reported(raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**BASE, "PROBE_E2E_PREFIX": raw})
    assert [p for p in info.value.problems if p.startswith("PROBE_E2E_PREFIX")]


def test_app_version_falls_back_to_the_version_stamped_into_the_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import settings as settings_module

    stamped = tmp_path / "version.txt"
    stamped.write_text("abc123\n", encoding="utf-8")
    monkeypatch.setattr(settings_module, "VERSION_FILE", stamped)
    settings_module.packaged_version.cache_clear()
    try:
        base = {"VISION_ENDPOINT": "https://x.cognitiveservices.azure.com",
                "AzureWebJobsStorage": "UseDevelopmentStorage=true"}
        assert Settings.from_env(base).monitoring.app_version == "abc123"
        # An explicit APP_VERSION still wins (the local stack and tests set one).
        assert Settings.from_env({**base, "APP_VERSION": "v9"}).monitoring.app_version == "v9"
        stamped.unlink()
        settings_module.packaged_version.cache_clear()
        assert Settings.from_env(base).monitoring.app_version == "dev"
    finally:
        settings_module.packaged_version.cache_clear()
