"""HTTP surface of the local host: ``/api/<route>`` functions and the real host's admin API.

Routes come from each HTTP trigger's ``route`` (default: the function name) under the
``routePrefix`` of host.json (default ``api``), with ``{param}``, ``{param:constraint}``,
``{param?}`` and ``{*rest}`` templates, matched case-insensitively as ASP.NET does. Auth levels
follow the real host: a missing or wrong key is a 401 with an empty body. Nothing here logs a key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from devstack.host.invoker import Invoker
from devstack.host.keys import HostKeys
from devstack.host.loader import HTTP_TRIGGER, FunctionSpec

log = logging.getLogger(__name__)

ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE")

_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "float": r"-?\d+(?:\.\d+)?",
    "double": r"-?\d+(?:\.\d+)?",
    "decimal": r"-?\d+(?:\.\d+)?",
    "bool": r"(?:true|false)",
    "alpha": r"[A-Za-z]+",
    "guid": r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}",
}


class HostApi(Protocol):
    """What the HTTP layer needs from the host."""

    @property
    def functions(self) -> Sequence[FunctionSpec]: ...

    @property
    def keys(self) -> HostKeys: ...

    @property
    def invoker(self) -> Invoker: ...

    def status(self) -> dict[str, Any]: ...

    async def invoke_admin(self, spec: FunctionSpec, payload: str) -> None: ...


def compile_route(template: str) -> re.Pattern[str]:
    """An anchored, case-insensitive regex for an ASP.NET-style route template."""
    pieces: list[str] = []
    position = 0
    text = template.strip("/")
    for match in re.finditer(r"\{([^{}]+)\}", text):
        literal = text[position:match.start()]
        inner = match.group(1)
        catch_all = inner.startswith("*")
        inner = inner.lstrip("*")
        optional = inner.endswith("?")
        inner = inner.rstrip("?")
        name, _, constraint = inner.partition(":")
        name = name.strip()
        if not name.isidentifier():
            raise ValueError(f"route {template!r}: bad parameter {match.group(1)!r}")
        body = ".*" if catch_all else _CONSTRAINTS.get(constraint.split("(")[0].lower(), "[^/]+")
        group = f"(?P<{name}>{body})"
        if (optional or catch_all) and literal.endswith("/"):
            pieces.append(re.escape(literal[:-1]) + f"(?:/{group})?")
        else:
            pieces.append(re.escape(literal) + (f"{group}?" if optional else group))
        position = match.end()
    pieces.append(re.escape(text[position:]))
    return re.compile("^" + "".join(pieces) + "/?$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class HttpRoute:
    spec: FunctionSpec
    template: str
    regex: re.Pattern[str]
    methods: frozenset[str]
    auth_level: str

    @classmethod
    def from_spec(cls, spec: FunctionSpec) -> HttpRoute:
        template = str(spec.trigger.get("route") or spec.name)
        methods = spec.trigger.get("methods") or ALL_METHODS
        return cls(spec=spec, template=template, regex=compile_route(template),
                   methods=frozenset(str(m).upper() for m in methods),
                   auth_level=str(spec.trigger.get("authLevel") or "FUNCTION").lower())


def presented_key(request: Request) -> str | None:
    return request.headers.get("x-functions-key") or request.query_params.get("code")


def _unauthorized() -> Response:
    return Response(status_code=401)


def to_starlette_response(result: Any) -> Response:
    """Map a function's return value to a response as the host does."""
    import azure.functions as func

    if isinstance(result, func.HttpResponse):
        headers = {k: v for k, v in result.headers.items() if k.lower() != "content-length"}
        if not any(k.lower() == "content-type" for k in headers):
            headers["content-type"] = f"{result.mimetype}; charset={result.charset}"
        return Response(content=result.get_body(), status_code=result.status_code,
                        headers=headers)
    if result is None:
        return Response(status_code=204)
    if isinstance(result, str):
        return Response(content=result, media_type="text/plain")
    if isinstance(result, bytes | bytearray):
        return Response(content=bytes(result), media_type="application/octet-stream")
    log.error("HTTP function returned %s, which is not an HTTP response", type(result).__name__)
    return Response(status_code=500)


def function_metadata(spec: FunctionSpec, base_url: str, route_prefix: str) -> dict[str, Any]:
    """One entry of ``GET /admin/functions`` (the fields scripts use from the real host)."""
    entry: dict[str, Any] = {
        "name": spec.name,
        "language": "python",
        "isDisabled": False,
        "isDirect": False,
        "href": f"{base_url}/admin/functions/{spec.name}",
        "config": {"scriptFile": "function_app.py", "bindings": list(spec.raw_bindings)},
        "invoke_url_template": None,
    }
    if spec.trigger_type == HTTP_TRIGGER:
        route = str(spec.trigger.get("route") or spec.name)
        prefix = f"/{route_prefix}" if route_prefix else ""
        entry["invoke_url_template"] = f"{base_url}{prefix}/{route}"
    return entry


def build_app(host: HostApi, *, route_prefix: str = "api") -> Starlette:
    routes = [HttpRoute.from_spec(s) for s in host.functions if s.trigger_type == HTTP_TRIGGER]
    prefix = route_prefix.strip("/")
    background: set[asyncio.Task[None]] = set()

    def base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def is_master(request: Request) -> bool:
        return host.keys.is_master(presented_key(request))

    async def home(request: Request) -> Response:
        return HTMLResponse("<html><body><h1>Your Functions app is up and running "
                            "(VisionOps local host)</h1></body></html>")

    async def host_status(request: Request) -> Response:
        if not is_master(request):
            return _unauthorized()
        return JSONResponse(host.status())

    async def list_functions(request: Request) -> Response:
        if not is_master(request):
            return _unauthorized()
        return JSONResponse([function_metadata(s, base_url(request), prefix)
                             for s in host.functions])

    async def admin_function(request: Request) -> Response:
        if not is_master(request):
            return _unauthorized()
        name = request.path_params["name"]
        spec = next((s for s in host.functions if s.name.lower() == name.lower()), None)
        if spec is None:
            return Response(status_code=404)
        if request.method == "GET":
            return JSONResponse(function_metadata(spec, base_url(request), prefix))
        if spec.trigger_type == HTTP_TRIGGER:
            return JSONResponse({"error": "HTTP functions are invoked on their route"},
                                status_code=400)
        raw = await request.body()
        try:
            document = json.loads(raw or b"{}")
        except ValueError:
            return Response(status_code=400)
        payload = document.get("input", "") if isinstance(document, dict) else ""
        task = asyncio.create_task(host.invoke_admin(spec, str(payload or "")))
        background.add(task)
        task.add_done_callback(background.discard)
        return Response(status_code=202)

    async def api(request: Request) -> Response:
        path = request.path_params.get("path", "")
        matched = [(r, m) for r in routes if (m := r.regex.match(path)) is not None]
        if not matched:
            return Response(status_code=404)
        allowed = [(r, m) for r, m in matched if request.method.upper() in r.methods]
        if not allowed:
            return Response(status_code=405)
        route, match = allowed[0]
        if not host.keys.authorizes(route.auth_level, presented_key(request)):
            return _unauthorized()
        return await _invoke_http(host.invoker, route, request,
                                  {k: v for k, v in match.groupdict().items() if v is not None})

    api_path = f"/{prefix}/{{path:path}}" if prefix else "/{path:path}"
    starlette_routes = [
        Route("/", home, methods=["GET", "HEAD"]),
        Route("/admin/host/status", host_status, methods=["GET"]),
        Route("/admin/functions", list_functions, methods=["GET"]),
        Route("/admin/functions/{name}", admin_function, methods=["GET", "POST"]),
        Route(api_path, api, methods=list(ALL_METHODS)),
    ]
    return Starlette(routes=starlette_routes)


async def _invoke_http(invoker: Invoker, route: HttpRoute, request: Request,
                       route_params: Mapping[str, str]) -> Response:
    import azure.functions as func

    body = await request.body()
    http_request = func.HttpRequest(
        method=request.method.upper(),
        url=str(request.url),
        headers=dict(request.headers.items()),
        params=dict(request.query_params.items()),
        route_params=dict(route_params),
        body=body,
    )
    outcome = await invoker.invoke(
        route.spec, {route.spec.trigger_param: http_request},
        reason="This function was programmatically called via the host APIs.")
    if not outcome.succeeded:
        return Response(status_code=500)
    return to_starlette_response(outcome.result)
