"""Query parameters of ``imageanalysis:analyze``, validated like the service does.

Order of checks: api-version (an unknown one is not routed: 404), ``features`` (unknown names and
names the emulator cannot compute: ``NotSupportedVisualFeature``), ``language``,
``gender-neutral-caption``, ``smartcrops-aspect-ratios`` (each 0.75..1.8), ``model-version``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from devstack.vision import errors, models

API_VERSIONS = frozenset({"2023-10-01", "2024-02-01"})

#: Service feature names by their lower-case spelling (the service matches case-insensitively).
FEATURES = {
    name.lower(): name
    for name in ("caption", "denseCaptions", "objects", "people", "read", "smartCrops", "tags")
}
#: What this emulator computes offline; the rest needs the service's cloud models.
COMPUTABLE = ("read", "people", "smartCrops")

#: Languages Image Analysis 4.0 accepts for its language-dependent output (tags/objects list;
#: caption is English-only). ``read`` detects the script itself and ignores ``language``.
LANGUAGES = frozenset(
    code.lower()
    for code in [
        *("ar", "bg", "bs", "ca", "cs", "cy", "da", "de", "el", "en", "es", "et", "eu", "fi"),
        *("fr", "ga", "gl", "he", "hi", "hr", "hu", "id", "it", "ja", "kk", "ko", "lt", "lv"),
        *("mk", "ms", "nb", "nl", "pl", "prs", "pt", "pt-BR", "pt-PT", "ro", "ru", "sk", "sl"),
        *("sr-Cyrl", "sr-Latn", "sv", "th", "tr", "uk", "vi", "zh", "zh-Hans", "zh-Hant"),
    ]
)

MIN_RATIO, MAX_RATIO = 0.75, 1.8
_MODEL_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")


@dataclass(frozen=True, slots=True)
class AnalyzeParams:
    api_version: str
    features: tuple[str, ...]  # canonical names, de-duplicated, request order
    language: str = "en"
    gender_neutral_caption: bool = False
    aspect_ratios: tuple[float, ...] = ()
    model_version: str = "latest"


def check_api_version(query: Mapping[str, str]) -> str:
    version = query.get("api-version", "")
    if version not in API_VERSIONS:
        raise errors.resource_not_found()
    return version


def requested_features(query: Mapping[str, str]) -> tuple[str, ...]:
    """Canonical feature names asked for (possibly unknown ones kept raw), for stats too."""
    names: list[str] = []
    for raw in query.get("features", "").split(","):
        name = raw.strip()
        if name:
            canonical = FEATURES.get(name.lower(), name)
            if canonical not in names:
                names.append(canonical)
    return tuple(names)


def parse(query: Mapping[str, str]) -> AnalyzeParams:
    api_version = check_api_version(query)
    features = requested_features(query)
    if not features:
        raise errors.bad_argument(
            "Either 'features' or 'model-name' needs to be specified in the query parameter."
        )
    for name in features:
        if name.lower() not in FEATURES:
            raise errors.not_supported_feature(f"The feature '{name}' is not supported.")
    for name in features:
        if name not in COMPUTABLE:
            raise errors.not_supported_feature(
                f"The feature '{name}' is not supported by the local Vision emulator: it needs "
                f"the service's cloud models and cannot be computed offline. Supported here: "
                f"{', '.join(COMPUTABLE)}."
            )
    language = query.get("language", "en")
    if language.lower() not in LANGUAGES:
        raise errors.not_supported_language(language)
    neutral_raw = query.get("gender-neutral-caption", "false").lower()
    if neutral_raw not in ("true", "false"):
        raise errors.bad_argument("The 'gender-neutral-caption' parameter must be true or false.")
    ratios = _ratios(query.get("smartcrops-aspect-ratios"))
    model_version = query.get("model-version", "latest")
    # Unconfirmed: the exact code for an unknown model version; BadArgument is the closest
    # documented inner code.
    if model_version != "latest" and not _MODEL_VERSION.match(model_version):
        raise errors.bad_argument(f"The model version '{model_version}' is not valid.")
    if model_version != "latest" and not models.is_known(model_version):
        raise errors.bad_argument(f"The model version '{model_version}' is not supported.")
    return AnalyzeParams(
        api_version=api_version,
        features=features,
        language=language,
        gender_neutral_caption=neutral_raw == "true",
        aspect_ratios=ratios,
        model_version=model_version,
    )


def _ratios(raw: str | None) -> tuple[float, ...]:
    if raw is None or not raw.strip():
        return ()
    values: list[float] = []
    for part in raw.split(","):
        try:
            value = float(part)
        except ValueError:
            value = float("nan")
        if not MIN_RATIO <= value <= MAX_RATIO:
            raise errors.bad_argument(
                f"Smart crops aspect ratio '{part.strip()}' is invalid: supported values are "
                f"between {MIN_RATIO} and {MAX_RATIO} (inclusive)."
            )
        values.append(value)
    return tuple(values)
