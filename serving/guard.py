"""The service's front door (ASGI middleware, before BentoML sees a request).

- With ``SENDWISE_API_KEY`` set, every path but the health checks (``/healthz``, ``/livez``,
  ``/readyz``) needs header ``x-api-key`` with that value (401): the API, ``/metrics``, the OpenAPI
  document and the docs page alike, and paths that do not exist.
- A path the service does not serve is answered 404 here (it never becomes a metrics label).
- ``/`` and ``/docs`` answer the documentation page of :mod:`serving.docs`; ``/metrics`` the
  bounded metrics of :mod:`serving.metrics`.
- An API body is read (at most :data:`MAX_BODY_BYTES`, announced or streamed: 413) and checked
  against the route's request model: a body that is not JSON or has a wrong field is a 400, a batch
  over :data:`serving.schemas.MAX_ITEMS` a 422; the body names each field and what was expected, and
  the server log gets one line (BentoML's own handling logs a traceback and names internal classes).
- ``GET /segments/{customer_id}`` is answered by the route ``/segments`` with the body
  ``{"customer_id": ...}`` (:data:`PATH_ROUTES`: a route whose one field is the path's last part).
- One batch runs at a time per worker (the others wait here, not in a thread), so a big batch
  holds one of the worker's threads and single requests keep the others.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import inspect
import json
import logging
import typing
from collections.abc import Awaitable, Callable, Mapping

import anyio
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, Response

from features.links import strip_controls
from serving.config import ServeConfig
from serving.docs import DOCS_PATHS, STATIC, docs_page
from serving.metrics import METRICS_PATH, OTHER, RequestMetrics, exposition
from serving.schemas import MAX_ITEMS, NO_CONTROLS, WORK_LIMIT

__all__ = ["HEALTH_PATHS", "MAX_BODY_BYTES", "GuardMiddleware", "endpoint_label", "protect", "request_models"]

logger = logging.getLogger("sendwise.serving")

MAX_BODY_BYTES = 2_000_000  # a 10,000-customer batch is about 200 kB
HEALTH_PATHS = ("/healthz", "/livez", "/readyz")
SYSTEM_PATHS = (*HEALTH_PATHS, METRICS_PATH, "/docs.json", "/schema.json", *DOCS_PATHS)
# Body types BentoML would not read as JSON (forms, multipart, its pickle format): the API takes JSON.
NOT_JSON = ("multipart/form-data", "application/x-www-form-urlencoded", "application/vnd.bentoml+pickle")
THREAD_VALIDATION_BYTES = 100_000  # bigger bodies are checked in a thread, off the event loop
PATH_ROUTES = {"/segments/": ("/segments", "customer_id")}  # GET <prefix><value>: POST route {field: value}


def endpoint_label(path: str, api_routes: Mapping[str, object]) -> str:
    """The metrics label of ``path``: the route itself, ``/static_content``, or ``other``."""
    if path in api_routes or path in SYSTEM_PATHS:
        return path
    for prefix, (_, field) in PATH_ROUTES.items():
        if path.startswith(prefix):
            return f"{prefix}{{{field}}}"
    return STATIC if path.startswith(STATIC + "/") else OTHER


def _printable(text: str, limit: int = 200) -> str:
    """A client's path or message as one bounded log line (no control character can forge a line)."""
    text = strip_controls(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _got(value: object) -> str:
    shown = json.dumps(value, ensure_ascii=True, default=repr) if not isinstance(value, str) else repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def describe(error: ValidationError) -> list[dict]:
    """Each problem of a request body as ``{"field", "message"[, "got"]}``: the field as a dotted
    path (``rules.min_price``, ``customer_ids.3``; ``body`` for the whole body), what was expected,
    and a short form of the value given."""
    problems = []
    for e in error.errors(include_url=False):
        field = ".".join(str(part) for part in e["loc"]) or "body"
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "string_pattern_mismatch" and e.get("ctx", {}).get("pattern") == NO_CONTROLS:
            message = "String should hold no control character (U+0000-U+001F, U+007F-U+009F)"
        problem = {"field": field, "message": message}
        if e["type"] not in ("missing", "json_invalid", WORK_LIMIT) and e["loc"]:
            problem["got"] = _got(e.get("input"))
        problems.append(problem)
    return problems


def _replaying(body: bytes, receive: Callable[[], Awaitable[dict]]) -> Callable[[], Awaitable[dict]]:
    """An ASGI ``receive`` that hands the app ``body`` (read already) once, then the client's messages."""
    replayed = False

    async def replay() -> dict:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class _Refused(Exception):
    def __init__(self, status: int, message: str, problems: list[dict] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.problems = status, message, problems


class GuardMiddleware:
    """See the module's docstring. ``routes`` maps each API route to its request model (None for a
    route that takes no body); ``batch_routes`` run one at a time; ``settings`` gives the service's
    settings, read when the server starts, whose ``api_key`` (None: open) every request must carry."""

    def __init__(self, app, routes: Mapping[str, type[BaseModel] | None], batch_routes: frozenset[str],
                 settings: Callable[[], ServeConfig]) -> None:
        self.app, self.routes, self.batch_routes = app, dict(routes), batch_routes
        key = settings().api_key
        self.api_key = key.get_secret_value().encode() if key else None
        self._batch_slot: asyncio.Semaphore | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in HEALTH_PATHS:
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        try:
            headers = dict(scope.get("headers") or [])
            if self.api_key and not hmac.compare_digest(headers.get(b"x-api-key", b""), self.api_key):
                raise _Refused(401, "missing or wrong x-api-key header")
            if method == "GET" and any(path.startswith(prefix) for prefix in PATH_ROUTES):
                return await self._path_route(scope, receive, send)
            if path in DOCS_PATHS and method in ("GET", "HEAD"):
                return await docs_page()(scope, receive, send)
            if path == METRICS_PATH and method in ("GET", "HEAD"):
                content, media_type = await anyio.to_thread.run_sync(exposition)
                return await Response(content, media_type=media_type)(scope, receive, send)
            if path not in self.routes:
                if path in SYSTEM_PATHS or path.startswith(STATIC + "/"):
                    return await self.app(scope, receive, send)
                raise _Refused(404, "no such route; the API is described at /docs")
            if method == "GET" and self.routes[path] is None:  # a route without a body (/model_info): GET too
                return await self.app(dict(scope, method="POST"), receive, send)
            if method != "POST":
                return await self.app(scope, receive, send)  # the router answers 405
            body = await self._read_body(headers, receive)
            if body is None:
                return None  # the client went away
            model = self.routes[path]
            if model is not None:
                await self._check(model, headers, body)
        except _Refused as refused:
            return await self._refuse(refused, scope, receive, send)

        replay = _replaying(body, receive)
        if path not in self.batch_routes:
            return await self.app(scope, replay, send)
        if self._batch_slot is None:
            self._batch_slot = asyncio.Semaphore(1)
        async with self._batch_slot:
            return await self.app(scope, replay, send)

    async def _path_route(self, scope, receive, send) -> None:
        """``GET <prefix><value>`` as ``POST <route>`` with ``{field: value}``, checked as any body is."""
        path = scope["path"]
        prefix = next(p for p in PATH_ROUTES if path.startswith(p))
        route, field = PATH_ROUTES[prefix]
        body = json.dumps({field: path[len(prefix):]}).encode()  # the ASGI path is percent-decoded already
        await self._check(self.routes[route], {}, body)
        headers = [(k, v) for k, v in scope.get("headers") or [] if k not in (b"content-length", b"content-type")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        rewritten = dict(scope, path=route, raw_path=route.encode(), method="POST", headers=headers, query_string=b"")
        return await self.app(rewritten, _replaying(body, receive), send)

    async def _read_body(self, headers: dict[bytes, bytes], receive: Callable[[], Awaitable[dict]]) -> bytes | None:
        """The whole body, or :class:`_Refused` 413 as soon as it is announced or seen to be too big."""
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            raise _Refused(413, f"body larger than {MAX_BODY_BYTES:,} bytes; split the batch")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            chunks.append(message.get("body", b""))
            size, more = size + len(chunks[-1]), message.get("more_body", False)
            if size > MAX_BODY_BYTES:
                raise _Refused(413, f"body larger than {MAX_BODY_BYTES:,} bytes; split the batch")
        return b"".join(chunks)

    @staticmethod
    async def _check(model: type[BaseModel], headers: dict[bytes, bytes], body: bytes) -> None:
        media_type = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if media_type.decode("latin-1") in NOT_JSON:
            raise _Refused(415, "the body must be JSON (content-type: application/json)")
        try:
            if len(body) > THREAD_VALIDATION_BYTES:
                await anyio.to_thread.run_sync(model.model_validate_json, body)
            else:
                model.model_validate_json(body or b"{}")
        except ValidationError as exc:
            problems = describe(exc)
            status = 422 if any(e["type"] == WORK_LIMIT for e in exc.errors(include_url=False)) else 400
            summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5])
            if len(problems) > 5:
                summary += f"; and {len(problems) - 5} more"
            raise _Refused(status, summary, problems) from None

    async def _refuse(self, refused: _Refused, scope, receive, send) -> None:
        body: dict = {"error": refused.message}
        if refused.problems is not None:
            body["errors"] = refused.problems
        if refused.status == 422:
            body["limit"] = {"items": MAX_ITEMS, "meaning": "customers x k per request"}
        logger.warning("%s %s %d: %s", scope["method"], _printable(scope["path"]), refused.status,
                       _printable(refused.message, 300))
        await JSONResponse(body, refused.status)(scope, receive, send)


def request_models(service) -> dict[str, type | None]:
    """Each API route of a BentoML service and the model its body must match (None for a route
    without a body)."""
    models = {}
    for method in service.apis.values():
        params = [p for p in inspect.signature(method.func).parameters.values() if p.name not in ("self", method.ctx_param)]
        models[method.route] = typing.get_type_hints(method.func)[params[0].name] if params else None
    return models


def protect(service, settings: Callable[[], ServeConfig]) -> None:
    """Put the bounded metrics and this guard in front of every route of ``service``; the API key is
    the one of ``settings`` (the service's own: ``SENDWISE_*`` variables, see :mod:`serving.config`)."""
    routes = request_models(service)
    service.add_asgi_middleware(RequestMetrics, endpoint=functools.partial(endpoint_label, api_routes=routes))
    service.add_asgi_middleware(GuardMiddleware, routes=routes,
                                batch_routes=frozenset(r for r in routes if r.endswith("_batch")), settings=settings)
