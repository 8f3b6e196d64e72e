"""The local front door: one stable loopback address in front of whichever host is current.

In Azure, clients call ``https://<app>.azurewebsites.net`` and the platform's front end sends
each request to an instance running the current version; a deployment changes the instances,
never the address. Locally ``python -m devstack up --front`` puts this small reverse proxy on the
stack's functions port and the host on a private one, so ``python -m devstack rollout`` can
start a new host beside the old one and switch traffic without clients noticing.

* The backend is read from ``<state>/front.json`` (``{"backend": "http://127.0.0.1:<port>"}``)
  whenever the file changes; each request is sent to the backend current when it arrives and
  finishes there, so a switch never cuts a request in half.
* ``GET /.front/status`` reports the current backend and the requests in flight per backend:
  the rollout waits for the old backend's count to reach 0 before it stops the old host.
* A backend that cannot be reached gives a 502 with a JSON cause (never a hang); the front does
  not retry (a retry would hide the failure the rollout rehearsal must count).

Local-only tooling: never deployed.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["BACKEND_FILE", "Front", "build_app", "main", "write_backend"]

log = logging.getLogger(__name__)

BACKEND_FILE = "front.json"
STATUS_PATH = "/.front/status"
# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones httpx recomputes.
_DROP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
         "trailer", "transfer-encoding", "upgrade", "content-length", "host"}
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def write_backend(state_dir: Path, url: str) -> None:
    """Point the front at ``url`` (atomic: a reader sees the old file or the new one)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / (BACKEND_FILE + ".tmp")
    tmp.write_text(json.dumps({"backend": url}), encoding="utf-8")
    tmp.replace(state_dir / BACKEND_FILE)


class Front:
    """The current backend (re-read when its file changes) and per-backend request counts."""

    def __init__(self, backend_file: Path) -> None:
        self.backend_file = backend_file
        self._stamp: tuple[int, int] | None = None
        self._backend = ""
        self.inflight: collections.Counter[str] = collections.Counter()
        self.served: collections.Counter[str] = collections.Counter()

    def backend(self) -> str:
        stat = self.backend_file.stat()
        stamp = (stat.st_mtime_ns, stat.st_ino)
        if stamp != self._stamp:
            self._backend = str(json.loads(self.backend_file.read_text("utf-8"))["backend"])
            self._stamp = stamp
            log.info("front: backend is now %s", self._backend)
        return self._backend

    def status(self) -> dict[str, Any]:
        return {"backend": self.backend(),
                "inflight": {k: v for k, v in self.inflight.items() if v},
                "served": dict(self.served)}


def build_app(front: Front, client: httpx.AsyncClient) -> Starlette:
    async def status(_request: Request) -> Response:
        return JSONResponse(front.status(), headers={"Cache-Control": "no-store"})

    async def forward(request: Request) -> Response:
        backend = front.backend()
        front.inflight[backend] += 1
        try:
            upstream = await client.request(
                request.method, backend + request.url.path,
                params=list(request.query_params.multi_items()),
                headers=[(k, v) for k, v in request.headers.items() if k.lower() not in _DROP],
                content=await request.body())
        except httpx.TransportError as exc:
            return JSONResponse({"error": {"cause": "backend_unreachable",
                                           "message": f"{backend}: {type(exc).__name__}"}},
                                status_code=502)
        finally:
            front.inflight[backend] -= 1
        front.served[backend] += 1
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _DROP}
        return Response(upstream.content, status_code=upstream.status_code, headers=headers)

    return Starlette(routes=[Route(STATUS_PATH, status, methods=["GET"]),
                             Route("/{path:path}", forward, methods=_METHODS)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.front",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, required=True,
                        help=f"folder holding {BACKEND_FILE}")
    parser.add_argument("--timeout", type=float, default=240.0,
                        help="seconds a forwarded request may take (Azure's HTTP limit is 230)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    front = Front(args.state_dir / BACKEND_FILE)
    front.backend()  # fail now, not on the first request, when there is no backend file
    client = httpx.AsyncClient(timeout=args.timeout, follow_redirects=False)
    uvicorn.run(build_app(front, client), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False, timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
