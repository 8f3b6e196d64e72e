"""The Image Analysis SDK's own ``samples/sample.jpg``, fetched at test time, never committed.

It is the image of the REST spec's documented example response (one person at 0.960, box
(395, 241, 261, 333); smart crop at 0.9 = (238, 0, 511, 568); lines "Sample text",
"Hand writing", "123 456"), so it is the reference the emulator is compared with. The file comes
from the source distribution of the installed ``azure-ai-vision-imageanalysis`` version through
the ordinary package client, and is cached in the temp dir. Tests that need it skip, saying why,
only when the package index cannot be reached.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

PACKAGE = "azure-ai-vision-imageanalysis"

#: The documented example (REST spec, analyze from URL, maximum set) on this image.
DOCUMENTED_PERSON = (395, 241, 261, 333)
DOCUMENTED_PERSON_CONFIDENCE = 0.960
DOCUMENTED_CROP_0_9 = (238, 0, 511, 568)
DOCUMENTED_LINES = ("Sample text", "Hand writing", "123 456")
#: The example has no 1.33 crop. Expected one derived from the documented 0.9 crop: same height
#: (568) and centre (x 493.5), width 568 x 1.33 = 755, shifted left to stay inside the 864 px
#: width, top edge as documented for 0.9 (y = 0).
DERIVED_CROP_1_33 = (109, 0, 755, 568)


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def sample_jpg() -> Path:
    """Path of the SDK's sample.jpg (a PNG file despite its name), or skip the test."""
    version = importlib.metadata.version(PACKAGE)
    cache = Path(tempfile.gettempdir()) / f"visionops-sdk-{version}"
    target = cache / "sample.jpg"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    download = Path(tempfile.mkdtemp(dir=cache))
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
        "--no-binary", ":all:", f"{PACKAGE}=={version}", "-d", str(download),
    ]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=300)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"{PACKAGE} {version} sdist not downloadable (package index unreachable?): "
                    f"{exc}")
    archives = sorted(download.glob("*.tar.gz"))
    assert archives, f"pip download left no source archive in {download}"
    with tarfile.open(archives[0]) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("/samples/sample.jpg"))
        extracted = archive.extractfile(member)
        assert extracted is not None
        partial = download / "sample.jpg"
        partial.write_bytes(extracted.read())
    partial.replace(target)  # atomic: parallel test runs never see half a file
    return target
