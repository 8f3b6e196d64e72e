"""The Image Analysis service's error responses, reproduced.

One exception type, :class:`VisionError`, carries status, body and headers; handlers raise it and
``app`` turns it into a response in one place. Shapes and messages follow what the real service
returns (sources next to each constructor). This module never decides *when* an error happens.

Body shape: ``{"error": {"code", "message", "innererror"?: {"code", "message"}}}``.
"""

from __future__ import annotations

import math
from typing import Any

from devstack.vision.config import MAX_DIMENSION_EXCLUSIVE, MAX_IMAGE_BYTES, MIN_DIMENSION_EXCLUSIVE


class VisionError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        inner_code: str | None = None,
        inner_message: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.inner_code = inner_code
        self.inner_message = inner_message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner_code is not None:
            error["innererror"] = {
                "code": self.inner_code,
                "message": self.inner_message or self.message,
            }
        return {"error": error}


def invalid_request(inner_code: str, message: str) -> VisionError:
    """400 ``InvalidRequest`` with an inner code (BadArgument, InvalidImageFormat, ...)."""
    return VisionError(400, "InvalidRequest", message, inner_code=inner_code)


def image_too_large() -> VisionError:
    # Observed from the real service (Microsoft Q&A 1688452, May 2024): for a body of 20 MB or
    # more it answers InvalidRequest *without* an innererror, unlike the dimension error.
    return VisionError(
        400,
        "InvalidRequest",
        f"The image size is not allowed to be zero or larger than {MAX_IMAGE_BYTES} bytes.",
    )


def invalid_dimension() -> VisionError:
    # Same source: bad width/height answers inner code InvalidImageSize (there is no
    # "InvalidImageDimension" code in the service's error enum) with this message.
    return invalid_request(
        "InvalidImageSize",
        f"The image dimension is not allowed to be smaller than {MIN_DIMENSION_EXCLUSIVE} "
        f"and larger than {MAX_DIMENSION_EXCLUSIVE}.",
    )


def invalid_format() -> VisionError:
    return invalid_request("InvalidImageFormat", "Input data is not a valid image.")


def invalid_url(detail: str) -> VisionError:
    return invalid_request("InvalidImageUrl", f"Failed to download image from input URL. {detail}")


def not_supported_feature(message: str) -> VisionError:
    return invalid_request("NotSupportedVisualFeature", message)


def bad_argument(message: str) -> VisionError:
    return invalid_request("BadArgument", message)


def not_supported_language(language: str) -> VisionError:
    return invalid_request(
        "NotSupportedLanguage", f"The input language '{language}' is not supported."
    )


def resource_not_found() -> VisionError:
    # What the gateway answers for an api-version it does not route (MicrosoftDocs/azure-docs
    # issue 120920): {"error":{"code":"404","message":"Resource not found"}}
    return VisionError(404, "404", "Resource not found")


def unauthorized(*, missing: bool, realm: str) -> VisionError:
    # Cognitive Services gateway wording; code is the string "401". The gateway's challenge
    # names the API's base URL as realm, as in a real 401 of the analyze operation
    # (MicrosoftLearning/mslearn-ai-vision issue 21): AzureApiManagementKey
    # realm="https://<resource>/computervision",name="Ocp-Apim-Subscription-Key",type="header".
    if missing:
        message = (
            "Access denied due to missing subscription key. Make sure to include subscription "
            "key when making requests to an API."
        )
    else:
        message = (
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
            "provide a valid key for an active subscription and use a correct regional API "
            "endpoint for your resource."
        )
    challenge = (
        f'AzureApiManagementKey realm="{realm}",name="Ocp-Apim-Subscription-Key",type="header"'
    )
    return VisionError(401, "401", message, headers={"WWW-Authenticate": challenge})


def retry_after_header(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def rate_limited(retry_after_s: float, *, kind: str, tier: str, api_version: str) -> VisionError:
    # Gateway wording for per-second/per-minute throttling, code "429" (see the Custom Vision and
    # Azure OpenAI variants of the same message in public issue threads).
    seconds = max(1, math.ceil(retry_after_s))
    unit = "second" if seconds == 1 else "seconds"
    advice = (
        "To increase your rate limit switch to a paid tier."
        if tier == "F0"
        else "Please contact Azure support service if you would like to further increase the "
        "default rate limit."
    )
    return VisionError(
        429,
        "429",
        f"Requests to the Analyze Operation under Computer Vision API ({api_version}) have "
        f"exceeded rate limit of your current {kind} {tier} pricing tier. "
        f"Please retry after {seconds} {unit}. {advice}",
        headers=retry_after_header(seconds),
    )


def quota_exceeded(retry_after_s: float, *, kind: str, tier: str) -> VisionError:
    # Monthly call-volume quota: Cognitive Services answer 403 (not 429) "Out of call volume
    # quota ..." (MicrosoftDocs/azure-docs issue 44214: "403 for monthly quota and 429 for per
    # second quota"). Retry-After is added so clients can schedule; it counts to the next month.
    days = max(1, math.ceil(retry_after_s / 86_400))
    return VisionError(
        403,
        "403",
        f"Out of call volume quota for {kind} {tier} pricing tier. Please retry after "
        f"{days} day{'s' if days > 1 else ''}. To increase your call volume switch to a paid tier.",
        headers=retry_after_header(retry_after_s),
    )


def injected(status: int, retry_after_s: float = 1.0) -> VisionError:
    """An error the fault injector decided to return (body says so, to ease debugging)."""
    codes = {
        408: "Timeout",
        429: "429",
        500: "InternalServerError",
        502: "BadGateway",
        503: "ServiceUnavailable",
        504: "GatewayTimeout",
    }
    headers = retry_after_header(retry_after_s) if status in (429, 503) else {}
    return VisionError(
        status,
        codes.get(status, str(status)),
        f"Injected by the local Vision emulator's fault schedule (HTTP {status}).",
        headers=headers,
    )


def outage() -> VisionError:
    return VisionError(
        503,
        "ServiceUnavailable",
        "The service is temporarily unavailable (outage window of the local Vision emulator).",
        headers={"Retry-After": "1"},
    )
