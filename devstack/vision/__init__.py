"""Offline emulator of the Azure AI Vision Image Analysis 4.0 REST API (local-only dev tooling).

Run it with ``python -m devstack.vision --port PORT --key KEY``; see docs/vision-emulator.md.
Importing this package loads no model: the OCR engine is created when the app starts.
"""

from __future__ import annotations

from devstack.vision.app import create_app
from devstack.vision.config import VisionConfig

__all__ = ["VisionConfig", "create_app"]
