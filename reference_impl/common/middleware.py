"""Pure-ASGI middleware (never BaseHTTPMiddleware: it costs a task and a stream copy per request).

Order, outermost first (see app.py): metrics, errors, body limit, tenant auth, then the router.
"""

from __future__ import annotations

import logging
from time import perf_counter

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reference_impl.common.metrics import UNROUTED, Metrics
from reference_impl.common.problem import BodyTooLarge, Problem, unavailable

log = logging.getLogger("saaslab.service")


class MetricsMiddleware:
    """Counts every HTTP request and its latency by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        status = 500

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            # The router writes the matched route into the shared scope on its way down.
            route = getattr(scope.get("route"), "path", UNROUTED)
            self.metrics.observe_request(scope["method"], route, status, perf_counter() - start)


class ErrorMiddleware:
    """Last line: a `Problem` or outage below the router becomes its response; anything else a bare 500.

    The exception is logged here with its traceback; the client only ever sees a problem document.
    """

    def __init__(self, app: ASGIApp, unavailable_errors: tuple[type[Exception], ...]) -> None:
        self.app = app
        self.unavailable_errors = unavailable_errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking_start(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking_start)
        except Exception as exc:
            if isinstance(exc, Problem):
                problem = exc
            elif isinstance(exc, self.unavailable_errors):
                log.warning("backing service unavailable on %s %s: %r", scope["method"], scope["path"], exc)
                problem = unavailable(f"A backing service did not answer ({type(exc).__name__}).")
            else:
                log.exception("unhandled error on %s %s", scope["method"], scope["path"])
                problem = Problem(500, "internal-error", "The service failed to handle this request.")
            if started:  # too late for a new status line; the server drops the connection
                raise
            await problem.send(send)


class BodyLimitMiddleware:
    """413 for bodies over `max_bytes`: from Content-Length up front, else while a chunked body streams."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
                break
        if declared is not None:
            if not declared.isdigit():
                await Problem(400, "bad-request", "Content-Length is not a number.").send(send)
            elif int(declared) > self.max_bytes:
                await Problem(413, "body-too-large", f"The request body exceeds {self.max_bytes} bytes.").send(send)
            else:
                # The HTTP server never delivers more than the declared length.
                await self.app(scope, receive, send)
            return
        await self._limit_streamed(scope, receive, send)

    async def _limit_streamed(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_bytes
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def send_tracking_start(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, send_tracking_start)
        except BodyTooLarge as exc:
            # Reached here only when something outside FastAPI's handlers read the body.
            if started:
                raise
            await Problem(413, "body-too-large", str(exc.detail)).send(send)
