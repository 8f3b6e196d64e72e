"""What the fidelity suite needs around the emulators to run code nobody here wrote.

* :func:`sdist` — an SDK's source distribution at the installed (pinned) version, downloaded
  with ``pip download --no-binary :all:`` into a cache under the system temp dir (never into
  the repository) and unpacked there; its ``samples/`` are what the suite runs.
* :class:`TlsProxy` — a loopback TLS front for an emulator, with a throw-away certificate for
  127.0.0.1 that the sample processes trust through ``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE``.
  azure-core refuses to send a bearer token over plain http, and the samples call services over
  https; with the proxy they do so unchanged but for the endpoint.
* :class:`TokenEndpoint` — the App Service managed-identity protocol on loopback
  (``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``, documented for azure-identity), so the samples'
  own ``DefaultAzureCredential()`` gets a token without reaching Entra ID.
* :class:`FileServer` — serves the SDK's sample image over loopback http for the URL samples
  (the Vision emulator fetches loopback URLs only).
* :func:`run_sample` — one sample in a child interpreter through ``shim.py``, with only the
  replacements listed (endpoint, image URL) applied to its source.

Everything binds to 127.0.0.1 and stops when its context exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import http.server
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devstack.monitor.config import DEFAULT_RESOURCE_ID, DEFAULT_WORKSPACE_ID

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIM = REPO_ROOT / "tests" / "fidelity" / "shim.py"
CACHE = Path(tempfile.gettempdir()) / "visionops-fidelity-sdists"
SAMPLE_TIMEOUT_S = 180.0


# --- source distributions -------------------------------------------------------------------

def sdist(distribution: str) -> Path:
    """The unpacked sdist of ``distribution`` at its installed version (cached between runs)."""
    version = metadata.version(distribution)
    stem = f"{distribution.replace('-', '_')}-{version}"
    target = CACHE / stem
    if (target / "samples").is_dir():
        return target
    download = CACHE / "downloads"
    download.mkdir(parents=True, exist_ok=True)
    archives = sorted(download.glob(f"{stem}.tar.gz"))
    if not archives:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--disable-pip-version-check", "-d", str(download), f"{distribution}=={version}"],
            capture_output=True, text=True, timeout=300, check=False,
        )
        archives = sorted(download.glob(f"{stem}.tar.gz"))
        if done.returncode != 0 or not archives:
            raise RuntimeError(f"pip download of the {distribution} {version} sdist failed: "
                               f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    staging = Path(tempfile.mkdtemp(dir=CACHE, prefix=f".{stem}-"))
    with tarfile.open(archives[0]) as archive:
        archive.extractall(staging, filter="data")
    unpacked = staging / stem
    if not (unpacked / "samples").is_dir():
        raise RuntimeError(f"{archives[0].name} has no samples/ folder")
    with contextlib.suppress(OSError):  # another run may have won the race: use its copy
        unpacked.rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


# --- TLS on loopback ------------------------------------------------------------------------

@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


def self_signed(directory: Path) -> Certificate:
    """A certificate for 127.0.0.1 that is its own trust anchor (valid for one day)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "visionops fidelity loopback")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    paths = Certificate(directory / "loopback.pem", directory / "loopback.key")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return paths


class TlsProxy:
    """``https://127.0.0.1:{port}`` → ``http://127.0.0.1:{target}``, byte for byte."""

    def __init__(self, target_port: int, certificate: Certificate) -> None:
        self.target_port = target_port
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(certificate.cert, certificate.key)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tls-proxy", daemon=True)
        self.port = 0

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self._context))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.run_until_complete(server.wait_closed())
            self._loop.close()

    def __enter__(self) -> TlsProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the TLS proxy did not start")
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# --- loopback HTTP helpers ------------------------------------------------------------------

class _Server:
    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)


@dataclass
class TokenLog:
    issued: int = 0
    refused: int = 0
    resources: list[str] = field(default_factory=list)


class TokenEndpoint(_Server):
    """App Service managed identity (api-version 2019-08-01) answering a fixed local token."""

    HEADER_SECRET = "visionops-fidelity-local"

    def __init__(self) -> None:
        self.log = TokenLog()
        log = self.log
        secret = self.HEADER_SECRET

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                resource = (query.get("resource") or [""])[0]
                if self.headers.get("X-IDENTITY-HEADER") != secret or not resource:
                    log.refused += 1
                    self._send(400, {"error": "invalid_request"})
                    return
                log.issued += 1
                log.resources.append(resource)
                self._send(200, {"access_token": "fidelity-local-token",
                                 "expires_on": str(int(time.time()) + 3600),
                                 "resource": resource, "token_type": "Bearer"})

            def _send(self, status: int, body: Mapping[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        super().__init__(Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/msi/token"


class FileServer(_Server):
    """Plain http for the files of one directory (the SDK's sample images)."""

    def __init__(self, directory: Path) -> None:
        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

        super().__init__(functools.partial(Handler, directory=str(directory)))  # type: ignore[arg-type]


# --- the shared stack and the report -------------------------------------------------------

VISION_KEY = "fidelity-local-key"


@dataclass(frozen=True)
class Outcome:
    suite: str
    case: str
    passed: bool
    detail: str


RESULTS: list[Outcome] = []
STARTED: list[str] = []


def record(suite: str, case: str, passed: bool, detail: str) -> None:
    RESULTS.append(Outcome(suite, case, passed, detail))


@dataclass(frozen=True)
class Stack:
    monitor_port: int
    vision_port: int
    monitor_https: str
    vision_https: str
    image_base: str
    tokens: TokenEndpoint
    cert: Certificate

    @property
    def monitor_http(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def sample_env(self) -> dict[str, str]:
        """What the samples read from the environment, all pointing at this stack."""
        return clean_environment({
            "LOGS_WORKSPACE_ID": DEFAULT_WORKSPACE_ID,
            # The emulator serves one workspace; the cross-workspace sample names it twice.
            "SECONDARY_WORKSPACE_ID": DEFAULT_WORKSPACE_ID,
            "LOGS_RESOURCE_ID": DEFAULT_RESOURCE_ID,
            "VISION_ENDPOINT": self.vision_https,
            "VISION_KEY": VISION_KEY,
            "IDENTITY_ENDPOINT": self.tokens.url,
            "IDENTITY_HEADER": TokenEndpoint.HEADER_SECRET,
            "SSL_CERT_FILE": str(self.cert.cert),
            "REQUESTS_CA_BUNDLE": str(self.cert.cert),
            "MPLBACKEND": "Agg",
        })



# --- running a sample -----------------------------------------------------------------------

@dataclass(frozen=True)
class SampleRun:
    name: str
    returncode: int
    stdout: str
    stderr: str
    replaced: dict[str, int]
    seconds: float


def sample_names(distribution: str) -> list[str]:
    """Every sample script in ``distribution``'s sdist, relative to its ``samples/``, sorted."""
    samples = sdist(distribution) / "samples"
    return sorted(str(p.relative_to(samples)) for p in samples.rglob("*.py"))


#: A sample run's verdict: None when it behaved as against Azure, else why not.
Check = Callable[[SampleRun], str | None]


def prints(*needles: str) -> Check:
    """The run printed every one of ``needles``."""
    def check(run: SampleRun) -> str | None:
        missing = [n for n in needles if n not in run.stdout]
        return f"output lacks {missing}" if missing else None
    return check


def clean_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The parent's environment without Azure credentials or proxies, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AZURE_", "MSI_", "IDENTITY_"))
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(extra)
    return env


def run_sample(sample: Path, workdir: Path, env: Mapping[str, str],
               replacements: Sequence[tuple[str, str]] = ()) -> SampleRun:
    """Run ``sample`` as ``__main__`` in ``workdir`` with only ``replacements`` applied."""
    workdir.mkdir(parents=True, exist_ok=True)
    image = sample.parent / "sample.jpg"
    if image.exists():
        shutil.copy(image, workdir / "sample.jpg")  # the file samples open "sample.jpg" by name
    argv = [sys.executable, str(SHIM), str(sample)]
    for old, new in replacements:
        argv += ["--replace", old, new]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=workdir, env=dict(env), capture_output=True, text=True,
                          timeout=SAMPLE_TIMEOUT_S, check=False)
    replaced: dict[str, int] = {}
    for line in done.stderr.splitlines():
        if line.startswith("fidelity-shim replaced "):
            count, _, old = line.removeprefix("fidelity-shim replaced ").partition(" x ")
            replaced[old] = int(count)
    return SampleRun(sample.name, done.returncode, done.stdout, done.stderr, replaced,
                     time.monotonic() - started)
