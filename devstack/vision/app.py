"""HTTP surface of the Vision emulator: the analyze route, health, and the admin API.

Request path of ``POST /computervision/imageanalysis:analyze`` (each step may answer early):
api-version routing (404) -> outage window (503 / dropped connection) -> auth (401) -> tier
limits (429 / 403, before any image work) -> injected faults (latency, held request, error) ->
parameters (400) -> image bytes (body or loopback URL) -> analysis in the worker pool ->
response (possibly trickled or corrupted by the fault schedule). Handlers hold no decisions of
their own: ``limits``, ``faults``, ``params``, ``imaging`` and ``analysis`` make them.

Auth: ``Ocp-Apim-Subscription-Key`` must equal the configured key; ``Authorization: Bearer <t>``
is accepted for any non-empty token (there is no Entra ID locally, so tokens are not validated).
The admin API requires the key header. A 401 carries the gateway's ``WWW-Authenticate``
challenge with the realm ``<scheme>://<host>/computervision`` of the request.

Every HTTP response, errors and dropped connections included, carries the gateway's headers:
a fresh ``apim-request-id`` (a UUID, what support asks for) and ``X-Content-Type-Options:
nosniff`` (:class:`GatewayHeaders`).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from devstack.vision import errors, intake, params
from devstack.vision.analysis import Analyzer
from devstack.vision.clock import Clock, SystemClock
from devstack.vision.config import VisionConfig
from devstack.vision.errors import VisionError
from devstack.vision.faults import FaultConfig, FaultConfigError, FaultDecision, FaultInjector
from devstack.vision.imaging import check_byte_size
from devstack.vision.limits import TierLimiter
from devstack.vision.models import CATALOG, ModelSelector
from devstack.vision.stats import Stats

logger = logging.getLogger(__name__)

ANALYZE_PATH = "/computervision/imageanalysis:analyze"
JSON_TYPE = "application/json; charset=utf-8"


class ConnectionDropped(Exception):
    """Raised after the response started: the server closes the socket mid-response."""


class DropConnection(Response):
    """Sends a status line and headers announcing a body, then drops the connection."""

    def __init__(self, status_code: int) -> None:
        super().__init__(status_code=status_code)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"512")],
            }
        )
        raise ConnectionDropped("fault injection: connection dropped")


class GatewayHeaders:
    """ASGI middleware adding the API gateway's per-response headers to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = str(uuid.uuid4()).encode()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    *message.get("headers", []),
                    (b"apim-request-id", request_id),
                    (b"x-content-type-options", b"nosniff"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def realm(request: Request) -> str:
    """The gateway's auth realm: the API's base URL as the client addressed it."""
    return f"{request.url.scheme}://{request.url.netloc}/computervision"


def error_response(error: VisionError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class Emulator:
    """State of one emulator instance: limiter, fault schedule, stats and the analyzer."""

    def __init__(self, config: VisionConfig, clock: Clock, analyzer: Analyzer | None) -> None:
        self.config = config
        self.clock = clock
        self.analyzer = analyzer
        self.limiter = TierLimiter(
            clock,
            tier=config.tier,
            tps=config.tps,
            per_minute=config.per_minute,
            monthly_quota=config.monthly_quota,
        )
        self.faults = FaultInjector()
        self.stats = Stats()
        self.models = ModelSelector()

    # --- auth -------------------------------------------------------------------------------
    def _key_matches(self, request: Request) -> bool | None:
        given = request.headers.get("ocp-apim-subscription-key")
        if given is None:
            return None
        return hmac.compare_digest(given.encode(), self.config.key.encode())

    def authorize(self, request: Request) -> None:
        matches = self._key_matches(request)
        if matches is True:
            return
        if matches is None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return
        missing = matches is None and "authorization" not in request.headers
        raise errors.unauthorized(missing=missing, realm=realm(request))

    def authorize_admin(self, request: Request) -> None:
        if self._key_matches(request) is not True:
            raise errors.unauthorized(
                missing=self._key_matches(request) is None, realm=realm(request)
            )

    # --- analyze ----------------------------------------------------------------------------
    async def analyze(self, request: Request) -> Response:
        features = params.requested_features(request.query_params)
        try:
            response = await self._analyze(request)
        except VisionError as error:
            response = error_response(error)
        status = "dropped" if isinstance(response, DropConnection) else str(response.status_code)
        self.stats.record(status, features)
        if response.status_code in (429, 403) and status != "dropped":
            self.stats.blocked += 1
        return response

    async def _analyze(self, request: Request) -> Response:
        body, body_length = await intake.read_body(request)
        api_version = params.check_api_version(request.query_params)
        outage = self.faults.active_outage(self.clock.time())
        if outage is not None:
            self.stats.fault("outage")
            if outage.mode == "reset":
                return DropConnection(503)
            raise errors.outage()
        self.authorize(request)
        admission = self.limiter.admit()
        if not admission.allowed:
            tier, kind = self.limiter.tier, self.config.account_kind
            if admission.reason == "quota":
                raise errors.quota_exceeded(admission.retry_after_s, kind=kind, tier=tier)
            raise errors.rate_limited(
                admission.retry_after_s, kind=kind, tier=tier, api_version=api_version
            )
        decision = self.faults.decide(body)
        for kind in decision.kinds:
            self.stats.fault(kind)
        if decision.latency_ms > 0:
            await self.clock.sleep(decision.latency_ms / 1000)
        if decision.hold is not None:
            await self.clock.sleep(decision.hold.hold_s)
            if decision.hold.then == "close":
                return DropConnection(200)
        if decision.error_status is not None:
            raise errors.injected(decision.error_status, self.faults.config.retry_after_s)
        parsed = params.parse(request.query_params)
        image = await self._image_bytes(request, body, body_length)
        if self.analyzer is None:
            raise RuntimeError("the analyzer is not loaded yet")
        model = self.models.resolve(parsed.model_version)
        result = model.apply(await self.analyzer.analyze(image, parsed))
        return self._respond(result, decision)

    async def _image_bytes(self, request: Request, body: bytes, body_length: int) -> bytes:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/json":
            url = intake.url_from_json(body)
            return await intake.fetch_local_url(url, timeout_s=self.config.url_fetch_timeout_s)
        if content_type in ("application/octet-stream", ""):
            check_byte_size(body_length)
            return body
        # Unconfirmed exact wording; the code list of the service has no dedicated media-type
        # code for v4, InvalidRequest/BadArgument is the closest.
        raise errors.bad_argument(f"The content type '{content_type}' is not supported.")

    def _respond(self, result: dict[str, Any], decision: FaultDecision) -> Response:
        payload = json.dumps(result, separators=(",", ":")).encode()
        if decision.corrupt == "truncate":
            return Response(payload[: max(1, len(payload) // 2)], media_type=JSON_TYPE)
        if decision.corrupt == "wrong_content_type":
            html = b"<html><body><h1>Bad Gateway</h1><p>upstream answered HTML</p></body></html>"
            return Response(html, media_type="text/html")
        slow = decision.slow_body
        if slow is not None:
            clock = self.clock

            async def trickle() -> AsyncIterator[bytes]:
                for start in range(0, len(payload), slow.chunk_bytes):
                    yield payload[start : start + slow.chunk_bytes]
                    await clock.sleep(slow.interval_ms / 1000)

            return StreamingResponse(trickle(), media_type=JSON_TYPE)
        return Response(payload, media_type=JSON_TYPE)

    # --- admin ------------------------------------------------------------------------------
    async def get_faults(self, request: Request) -> Response:
        return JSONResponse(self.faults.config.to_json())

    async def put_faults(self, request: Request) -> Response:
        document = await _json_object(request)
        try:
            config = FaultConfig.from_json(document, now=self.clock.time())
        except FaultConfigError as exc:
            return _admin_error(exc.problems)
        self.faults.replace(config)
        logger.info("fault schedule replaced: %s", sorted(k for k, v in document.items() if v))
        return JSONResponse(config.to_json())

    async def reset_faults(self, request: Request) -> Response:
        self.faults.reset()
        return JSONResponse(self.faults.config.to_json())

    async def get_tier(self, request: Request) -> Response:
        return JSONResponse(self.limiter.snapshot())

    async def put_tier(self, request: Request) -> Response:
        document = await _json_object(request)
        problems: list[str] = []
        tier = document.get("tier", self.limiter.tier)
        if tier not in ("F0", "S1"):
            problems.append("tier must be F0 or S1")
        tps = _positive(document, "tps", problems, integer=False)
        per_minute = _positive(document, "per_minute", problems, integer=True)
        quota = _positive(document, "monthly_quota", problems, integer=True)
        reset_usage = document.get("reset_usage", False)
        if not isinstance(reset_usage, bool):
            problems.append("reset_usage must be true or false")
        if problems:
            return _admin_error(problems)
        self.limiter.configure(
            tier=tier,
            tps=tps,
            per_minute=None if per_minute is None else int(per_minute),
            monthly_quota=None if quota is None else int(quota),
            reset_usage=bool(reset_usage),
        )
        return JSONResponse(self.limiter.snapshot())

    async def get_model(self, request: Request) -> Response:
        return JSONResponse(self.models.snapshot())

    async def put_model(self, request: Request) -> Response:
        document = await _json_object(request)
        latest = document.get("latest")
        if not isinstance(latest, str) or latest not in CATALOG:
            return _admin_error([f"latest must be one of {', '.join(sorted(CATALOG))}"])
        self.models.set_latest(latest)
        logger.info("model version latest -> %s", latest)
        return JSONResponse(self.models.snapshot())

    async def get_stats(self, request: Request) -> Response:
        return JSONResponse({**self.stats.snapshot(), "tier": self.limiter.snapshot()})

    async def reset_stats(self, request: Request) -> Response:
        self.stats.reset()
        return JSONResponse(self.stats.snapshot())

    async def healthz(self, request: Request) -> Response:
        if self.analyzer is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ok", "ocr": "loaded", "tier": self.limiter.tier})


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        document = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise errors.bad_argument("The admin request body is not valid JSON.") from exc
    if not isinstance(document, dict):
        raise errors.bad_argument("The admin request body must be a JSON object.")
    return document


def _positive(
    document: dict[str, Any], key: str, problems: list[str], *, integer: bool
) -> float | None:
    value = document.get(key)
    if value is None:
        return None
    valid_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not valid_type or value <= 0:
        problems.append(f"{key} must be a positive {'integer' if integer else 'number'}")
        return None
    return float(value)


def _admin_error(problems: list[str]) -> JSONResponse:
    body = {"error": {"code": "BadRequest", "message": "; ".join(problems), "details": problems}}
    return JSONResponse(body, status_code=400)


Handler = Callable[[Request], Awaitable[Response]]


def _guarded(emulator: Emulator, handler: Handler, *, admin: bool) -> Handler:
    async def endpoint(request: Request) -> Response:
        try:
            if admin:
                emulator.authorize_admin(request)
            return await handler(request)
        except VisionError as error:
            return error_response(error)

    return endpoint


def create_app(
    config: VisionConfig,
    *,
    clock: Clock | None = None,
    analyzer_factory: Callable[[VisionConfig], Analyzer] = Analyzer,
) -> Starlette:
    """The emulator as an ASGI app; the analyzer (OCR models) loads at startup."""
    emulator = Emulator(config, clock or SystemClock(), analyzer=None)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        emulator.analyzer = analyzer_factory(config)
        logger.info("Vision emulator ready (tier %s)", config.tier)
        try:
            yield
        finally:
            emulator.analyzer.close()

    def admin(handler: Handler) -> Handler:
        return _guarded(emulator, handler, admin=True)

    routes = [
        Route("/healthz", emulator.healthz, methods=["GET"]),
        Route(ANALYZE_PATH, emulator.analyze, methods=["POST"]),
        Route("/admin/faults", admin(emulator.get_faults), methods=["GET"]),
        Route("/admin/faults", admin(emulator.put_faults), methods=["PUT"]),
        Route("/admin/faults/reset", admin(emulator.reset_faults), methods=["POST"]),
        Route("/admin/tier", admin(emulator.get_tier), methods=["GET"]),
        Route("/admin/tier", admin(emulator.put_tier), methods=["PUT"]),
        Route("/admin/model", admin(emulator.get_model), methods=["GET"]),
        Route("/admin/model", admin(emulator.put_model), methods=["PUT"]),
        Route("/admin/stats", admin(emulator.get_stats), methods=["GET"]),
        Route("/admin/stats/reset", admin(emulator.reset_stats), methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(GatewayHeaders)])
    app.state.emulator = emulator
    return app
