"""Settings of the local Vision emulator, parsed once into a frozen dataclass.

Never read the environment here: the CLI (``__main__``) and tests build the config explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Tier = Literal["F0", "S1"]

#: Service limits from the Image Analysis 4.0 documentation ("Image requirements").
MAX_IMAGE_BYTES = 20 * 1024 * 1024  # 20,971,520 bytes; the request must be *smaller*
MIN_DIMENSION_EXCLUSIVE = 50  # width and height must be > 50 px
MAX_DIMENSION_EXCLUSIVE = 16_000  # ... and < 16,000 px

#: What the service answers in ``modelVersion`` for the GA API versions.
MODEL_VERSION = "2023-10-01"


class ConfigError(ValueError):
    """Raised with every problem of a config at once."""


@dataclass(frozen=True, slots=True)
class VisionConfig:
    """Everything the emulator can be tuned with.

    ``tps`` applies to S1, ``per_minute`` and ``monthly_quota`` to F0 (F0's documented limit is
    20 calls per minute; its monthly quota of 5,000 is not confirmed by the docs, hence tunable).
    """

    key: str
    host: str = "127.0.0.1"
    port: int = 0
    tier: Tier = "S1"
    tps: float = 10.0
    per_minute: int = 20
    monthly_quota: int = 5_000
    max_concurrency: int = 2
    #: The OCR engine's ONNX intra-op threads: one costs the least CPU per call (docs).
    ocr_threads: int = 1
    #: Detection (people, smart crops) runs on a copy whose longer side is at most this.
    detect_max_side: int = 1024
    #: Images with more pixels than this are not decoded (memory guard, see docs).
    max_decode_pixels: int = 100_000_000
    url_fetch_timeout_s: float = 10.0
    #: Emulated service name in 429/403 messages ("ComputerVision S1 pricing tier").
    account_kind: str = "ComputerVision"

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError("invalid Vision emulator config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        found: list[str] = []
        if not self.key:
            found.append("key must not be empty")
        if self.tier not in ("F0", "S1"):
            found.append(f"tier must be F0 or S1, not {self.tier!r}")
        if not self.tps > 0:
            found.append("tps must be > 0")
        if self.per_minute < 1:
            found.append("per_minute must be >= 1")
        if self.monthly_quota < 1:
            found.append("monthly_quota must be >= 1")
        if self.max_concurrency < 1:
            found.append("max_concurrency must be >= 1")
        if self.ocr_threads < 1:
            found.append("ocr_threads must be >= 1")
        if self.detect_max_side < 64:
            found.append("detect_max_side must be >= 64")
        if self.max_decode_pixels < 1_000_000:
            found.append("max_decode_pixels must be >= 1,000,000")
        if not 0 <= self.port <= 65_535:
            found.append("port must be within 0..65535")
        if self.url_fetch_timeout_s <= 0:
            found.append("url_fetch_timeout_s must be > 0")
        return found
